/*
 * proc.c - /proc/PID/stat, read once and parsed defensively: the command
 * name (field 2) may hold spaces and parentheses, so fields are counted
 * from the last ')'.
 */
#include "common/proc.h"

#include <stdio.h>
#include <string.h>

int ec_proc_stat(pid_t pid, char *state, uint64_t *start)
{
    char path[64], buf[1024];
    FILE *f;
    char st = 0;
    unsigned long long t = 0;
    int rc = -1;

    if (state)
        *state = 0;
    if (start)
        *start = 0;
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (!(f = fopen(path, "re")))
        return -1;
    if (fgets(buf, sizeof(buf), f)) {
        /* after "pid (comm) ": state is field 3, starttime field 22 */
        char *p = strrchr(buf, ')');
        if (p && sscanf(p + 1, " %c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s "
                               "%*s %*s %*s %*s %llu",
                        &st, &t) == 2) {
            if (state)
                *state = st;
            if (start)
                *start = t;
            rc = 0;
        }
    }
    fclose(f);
    return rc;
}
