/* Fuzzes config_load through a fake getenv: the input is split at NUL bytes into the
 * values of the documented variables, in order (a lone 0x01 byte leaves a variable
 * unset). Whatever the values, config_load either succeeds or names the variable in
 * its message, and frees everything either way. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "steward/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_VARS 64

struct fake_env {
    size_t n;
    const char *names[MAX_VARS];
    char *values[MAX_VARS];
};

static const char *fake_getenv(const char *name, void *arg)
{
    struct fake_env *e = arg;
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->names[i], name) == 0)
            return e->values[i];
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fake_env env = {0};
    struct config_doc d;
    while (env.n < MAX_VARS && config_doc_at(env.n, &d) == 0)
        env.names[env.n++] = d.name;
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    /* chunk i (up to a NUL) is the value of variable i */
    char *p = copy, *end = copy + size;
    for (size_t i = 0; i < env.n && p <= end; i++) {
        size_t len = strlen(p);
        env.values[i] = (len == 1 && p[0] == '\x01') ? NULL : p;
        p += len + 1;
        if (p > end)
            break;
    }
    struct config cfg;
    char err[256] = "";
    if (config_load(&cfg, fake_getenv, &env, err, sizeof(err)) == 0) {
        if (!cfg.bind || !cfg.database_url || !cfg.database_listen_url)
            fuzz_fail("config_load", "succeeded with a NULL string");
        if (cfg.http_port < 0 || cfg.db_pool_size < 1 || cfg.http_threads < 1)
            fuzz_fail("config_load", "accepted an out-of-range number");
        config_release(&cfg);
    } else {
        if (!strstr(err, "STEWARD_"))
            fuzz_fail("config_load", "error does not name the variable");
    }
    free(copy);
    return 0;
}
