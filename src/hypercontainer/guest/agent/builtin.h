/*
 * The agent's builtins: functions of the agent binary that an EXEC with `builtin` runs in its process, after the
 * usual setup, where it would exec a command (docs/protocol.md, "Builtins").
 */
#ifndef HC_BUILTIN_H
#define HC_BUILTIN_H

/* argv[0] is the builtin's name; returns the exit status. */
typedef int (*builtin_fn)(int argc, char **argv);

/* The builtin named `name`: archive, extract, stat, ps; NULL if there is none. */
builtin_fn builtin_find(const char *name);

/* In the process that runs it: every fd but 0-2 closed (the agent's, and the one that reports the start), then
 * the builtin, then _exit with its status. */
void builtin_run(builtin_fn fn, char **argv) __attribute__((noreturn));

#endif
