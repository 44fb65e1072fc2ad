/* cuda/backend.c: being written */
