/* Command-line entry: picks the command and hands over to src/app/app.c. */
#include <stdio.h>
#include <string.h>

#include "steward/app.h"
#include "steward/config.h"
#include "steward/migrate.h"

static int usage(FILE *out, int status)
{
    fprintf(out, "usage: steward [serve]\n"
                 "       steward migrate\n"
                 "       steward keys create --name NAME --scope read|service|admin\n"
                 "       steward keys revoke --name NAME\n"
                 "       steward healthcheck\n"
                 "       steward version\n"
                 "       steward routes [--scopes]\n"
                 "       steward config --markdown\n"
                 "Settings come from STEWARD_* environment variables (see\n"
                 "docs/configuration.md, which `steward config --markdown` prints).\n");
    return status;
}

static const char *flag(int argc, char **argv, const char *name)
{
    for (int i = 0; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return NULL;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "serve";
    if (strcmp(cmd, "serve") == 0)
        return app_serve();
    if (strcmp(cmd, "migrate") == 0)
        return app_migrate();
    if (strcmp(cmd, "healthcheck") == 0)
        return app_healthcheck();
    if (strcmp(cmd, "routes") == 0)
        return app_routes(argc > 2 && strcmp(argv[2], "--scopes") == 0);
    if (strcmp(cmd, "config") == 0 && argc == 3 && strcmp(argv[2], "--markdown") == 0)
        return config_describe(stdout) == 0 ? 0 : 1;
    if (strcmp(cmd, "version") == 0) {
        printf("steward %s (schema %d)\n", STEWARD_VERSION, migrate_latest());
        return 0;
    }
    if (strcmp(cmd, "keys") == 0 && argc > 2) {
        const char *name = flag(argc, argv, "--name");
        if (strcmp(argv[2], "create") == 0 && name && flag(argc, argv, "--scope"))
            return app_keys_create(name, flag(argc, argv, "--scope"));
        if (strcmp(argv[2], "revoke") == 0 && name)
            return app_keys_revoke(name);
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0)
        return usage(stdout, 0);
    return usage(stderr, 2);
}
