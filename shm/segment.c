/* shm/segment.c: being written */
