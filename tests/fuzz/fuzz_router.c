/* Fuzzes the router and path decoding: method + path against the full route table,
 * and router_decode on raw bytes. Checks what the router promises: parameters are
 * decoded, NUL-free and at most ROUTER_PARAM_MAX bytes; a match has as many
 * parameters as its pattern has; Allow lists only when the path is known. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
                                      "OPTIONS", "get", "", "TRACE"};

static size_t count_params(const char *pattern)
{
    size_t n = 0;
    for (const char *p = pattern; *p; p++)
        n += *p == '{';
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_world *w = fuzz_world_get(false);
    if (size < 2)
        return 0;
    const char *method = methods[data[0] % (sizeof(methods) / sizeof(methods[0]))];
    size_t cap = (size_t)data[1] * 4 + 1; /* 1..1021 */
    data += 2;
    size -= 2;

    /* the path is a C string, as libmicrohttpd hands it over */
    char *path = malloc(size + 1);
    if (!path)
        return 0;
    memcpy(path, data, size);
    path[size] = '\0';

    struct route_match m;
    router_match(&w->router, method, path, &m);
    if (m.route) {
        if (m.nparams != count_params(m.route->pattern))
            fuzz_fail("router_match", "parameter count differs from the pattern");
        if (strcmp(m.route->method, method) != 0)
            fuzz_fail("router_match", "matched a route of another method");
        for (size_t i = 0; i < m.nparams; i++) {
            size_t n = strnlen(m.params[i].value, sizeof(m.params[i].value));
            if (n > ROUTER_PARAM_MAX || n == 0)
                fuzz_fail("router_match", "parameter empty or longer than the limit");
        }
        if (m.bad_param)
            fuzz_fail("router_match", "a route matched with a bad parameter");
    }
    if (!m.path_known && m.allow[0] && !m.route)
        fuzz_fail("router_match", "Allow set for an unknown path");

    char *dst = malloc(cap);
    if (dst) {
        long n = router_decode((const char *)data, size, dst, cap);
        if (n >= 0) {
            if ((size_t)n >= cap || dst[n] != '\0' || memchr(dst, '\0', (size_t)n))
                fuzz_fail("router_decode", "output overflows or holds a NUL");
            if ((size_t)n > size)
                fuzz_fail("router_decode", "decoded text longer than its input");
        }
        free(dst);
    }
    free(path);
    return 0;
}
