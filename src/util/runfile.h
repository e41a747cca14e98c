/*
 * runfile: files that belong to one lmcd run and must not outlive it (the
 * plugin config file with its secrets), with a proof of ownership that
 * survives kill -9.
 *
 * The creating lmcd keeps the file open with an exclusive flock() for its
 * whole life. The kernel releases the lock when the process dies, however
 * it dies, so a later lmcd that can take the lock knows the owner is gone
 * (a pid could have been reused or live in another PID namespace).
 *
 * Threads: no state of its own; callable from any thread.
 */
#ifndef LMCD_UTIL_RUNFILE_H
#define LMCD_UTIL_RUNFILE_H

/* mkostemp(path_template) (mode 0600, O_CLOEXEC) and takes the lock.
 * Returns the fd (keep it open while the file is ours) or -errno; on
 * failure nothing is left behind. */
int runfile_create(char *path_template);

/* Removes each regular file in `dir` whose name starts with `prefix`,
 * owned by our uid, whose lock can be taken now (its lmcd is gone); logs
 * one WARNING per file naming `what`. Returns the number removed. */
int runfile_reclaim(const char *dir, const char *prefix, const char *what);

#endif
