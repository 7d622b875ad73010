/* Shared by the fuzz targets: a logger that writes nowhere, the whole route table
 * registered with real capability contexts over a pool whose database does not exist
 * (so every request that passes validation ends in 503, never in a crash), and a
 * failure helper. Each target is one libFuzzer binary. */
#ifndef STEWARD_FUZZ_COMMON_H
#define STEWARD_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "steward/router.h"

struct fuzz_world {
    struct router router;
    struct ws_server *ws; /* NULL unless fuzz_world_get(true) */
};

/* Builds the world once per process (the contexts live until exit). with_ws also
 * creates a WebSocket server (bound, never started) with the scouts frame handlers. */
struct fuzz_world *fuzz_world_get(bool with_ws);

/* Prints what went wrong and aborts (libFuzzer keeps the input as a crash). */
void fuzz_fail(const char *what, const char *detail) __attribute__((noreturn));

#endif
