/* cuda/backend_cuda.c: being written */
