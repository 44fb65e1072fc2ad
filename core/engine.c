/* core/engine.c: being written */
