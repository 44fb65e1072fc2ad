/* shm/extent.c: being written */
