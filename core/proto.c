/* core/proto.c: being written */
