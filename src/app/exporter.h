/* The Prometheus exporter (text format 0.0.4) and its GET /metrics route. Private to
 * src/app: it reads the metrics, the route table that names their slots, the pool and
 * the dbpipe, so only the wiring layer may hold it. struct exporter_sources is defined
 * in steward/app.h, where struct app embeds it. */
#ifndef STEWARD_APP_EXPORTER_H
#define STEWARD_APP_EXPORTER_H

#include <stddef.h>

#include "steward/app.h"

/* Everything /metrics shows, as text; the caller frees the result. NULL when out of
 * memory. */
char *exporter_render(const struct exporter_sources *src, size_t *len);
/* Registers GET /metrics (unauthenticated); src is borrowed and must outlive r's use.
 * Does not dereference src (the route table command passes an empty one). */
int exporter_register(struct router *r, struct exporter_sources *src);

#endif
