/* shm/index.c: being written */
