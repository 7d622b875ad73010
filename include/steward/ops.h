/* Operational routes: GET /livez, /readyz, /openapi.yaml. */
#ifndef STEWARD_OPS_H
#define STEWARD_OPS_H

#include <stddef.h>

#include "steward/pool.h"
#include "steward/router.h"

struct ops_ctx {
    struct pool *pool;
};

/* The OpenAPI document compiled into the binary. */
extern const char ops_openapi[];
extern const size_t ops_openapi_len;

int ops_register(struct router *r, struct ops_ctx *ctx);

#endif
