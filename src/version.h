/* The lmcd version, shown by --version, GET /version and the start-up log. */
#ifndef LMCD_VERSION_H
#define LMCD_VERSION_H
#define LMCD_VERSION "0.1.0"
#endif
