/* The console's files: the embedded table, names that are never served, STEWARD_DECK=false
 * and STEWARD_DECK_DIR (no database: deck_new takes a NULL pool here). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "steward/deck.h"
#include "steward/err.h"
#include "unit.h"

static void test_embedded(void)
{
    struct deck_opts o = {.enabled = true};
    struct deck *d = deck_new(NULL, NULL, &o);
    struct deck_file f;
    unsigned char *owned = NULL;
    CHECK(deck_file_get(d, "index.html", &f, &owned) == ST_OK);
    CHECK(owned == NULL);
    CHECK_STR(f.type, "text/html; charset=utf-8");
    CHECK(f.len > 0 && memmem(f.data, f.len, "/deck/app.js", 12) != NULL);
    CHECK(f.etag[0] == '"' && strlen(f.etag) == 34);
    CHECK(deck_file_get(d, "app.js", &f, &owned) == ST_OK);
    CHECK_STR(f.type, "text/javascript; charset=utf-8");
    /* nothing outside the table, no hidden or traversing names */
    CHECK(deck_file_get(d, "nope.js", &f, &owned) == ST_ENOTFOUND);
    CHECK(deck_file_get(d, "../meson.build", &f, &owned) == ST_ENOTFOUND);
    CHECK(deck_file_get(d, ".hidden.js", &f, &owned) == ST_ENOTFOUND);
    CHECK(deck_file_get(d, "", &f, &owned) == ST_ENOTFOUND);
    deck_free(d);
}

static void test_disabled(void)
{
    struct deck_opts o = {.enabled = false};
    struct deck *d = deck_new(NULL, NULL, &o);
    struct deck_file f;
    unsigned char *owned = NULL;
    CHECK(deck_file_get(d, "index.html", &f, &owned) == ST_EDISABLED);
    CHECK(deck_file_get(d, "app.js", &f, &owned) == ST_EDISABLED);
    deck_free(d);
}

static void test_dir(void)
{
    char dir[] = "/tmp/deck-unit-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[64];
    snprintf(path, sizeof(path), "%s/app.js", dir);
    FILE *fp = fopen(path, "w");
    fputs("export const x = 1;\n", fp);
    fclose(fp);
    struct deck_opts o = {.enabled = true, .dir = dir};
    struct deck *d = deck_new(NULL, NULL, &o);
    struct deck_file f;
    unsigned char *owned = NULL;
    CHECK(deck_file_get(d, "app.js", &f, &owned) == ST_OK);
    CHECK(owned != NULL && f.len == 20 && memcmp(f.data, "export const x = 1;\n", 20) == 0);
    CHECK_STR(f.type, "text/javascript; charset=utf-8");
    free(owned);
    CHECK(deck_file_get(d, "index.html", &f, &owned) == ST_ENOTFOUND);
    deck_free(d);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    test_embedded();
    test_disabled();
    test_dir();
    return unit_done();
}
