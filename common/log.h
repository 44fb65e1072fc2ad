/*
 * log.h - the daemon's and tools' log lines on standard error.
 *
 * One line per event: "embcached[pid]: LEVEL: message". The level threshold
 * is process-wide, set at start-up and changed by embcached's SIGHUP
 * (ec_log_set_level). Safe from any thread (each line is written with one
 * write(2)).
 */
#ifndef EC_COMMON_LOG_H
#define EC_COMMON_LOG_H

enum ec_log_level { EC_LOG_ERROR = 0, EC_LOG_WARN = 1, EC_LOG_INFO = 2, EC_LOG_DEBUG = 3 };

void ec_log_init(const char *ident, enum ec_log_level level);
/* Change the threshold (any thread; takes effect for the next line). */
void ec_log_set_level(enum ec_log_level level);
enum ec_log_level ec_log_get_level(void);
void ec_log(enum ec_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ec_error(...) ec_log(EC_LOG_ERROR, __VA_ARGS__)
#define ec_warn(...) ec_log(EC_LOG_WARN, __VA_ARGS__)
#define ec_info(...) ec_log(EC_LOG_INFO, __VA_ARGS__)
#define ec_debug(...) ec_log(EC_LOG_DEBUG, __VA_ARGS__)

#endif
