/* The reader of the cross-instance notification payloads (scouts/scouts_notify.h). */
#include <stdlib.h>
#include <string.h>

#include "scouts/scouts_notify.h"
#include "unit.h"

#define PID "0b7e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b"
#define DEV "1c8f3d2b-4a5e-4f60-9bac-1d2e3f4a5b6c"

static void kinds_agree_with_sql(void)
{
    /* the statements name the kinds by these literals */
    CHECK(strlen(SCOUTS_NOTIFY_SQL_QUEUED) == 3 &&
          SCOUTS_NOTIFY_SQL_QUEUED[1] == SCOUTS_NOTIFY_QUEUED);
    CHECK(strlen(SCOUTS_NOTIFY_SQL_ACKED) == 3 &&
          SCOUTS_NOTIFY_SQL_ACKED[1] == SCOUTS_NOTIFY_ACKED);
    CHECK(strlen(SCOUTS_NOTIFY_SQL_DEVICE_GONE) == 3 &&
          SCOUTS_NOTIFY_SQL_DEVICE_GONE[1] == SCOUTS_NOTIFY_DEVICE_GONE);
    CHECK(strlen(SCOUTS_NOTIFY_SQL_USER_ERASED) == 3 &&
          SCOUTS_NOTIFY_SQL_USER_ERASED[1] == SCOUTS_NOTIFY_USER_ERASED);
    CHECK_STR(SCOUTS_CHANNEL, "steward_scouts");
}

static void well_formed(void)
{
    static struct scouts_notify n;

    CHECK(scouts_notify_parse("q|alice", &n) == 0);
    CHECK(n.kind == SCOUTS_NOTIFY_QUEUED);
    CHECK_STR(n.user, "alice");
    CHECK(!n.instance && !n.proposal && !n.device);

    CHECK(scouts_notify_parse("a|0123456789abcdef|" PID "|" DEV "|bob", &n) == 0);
    CHECK(n.kind == SCOUTS_NOTIFY_ACKED);
    CHECK_STR(n.instance, "0123456789abcdef");
    CHECK_STR(n.proposal, PID);
    CHECK_STR(n.device, DEV);
    CHECK_STR(n.user, "bob");

    CHECK(scouts_notify_parse("d|" DEV "|carol", &n) == 0);
    CHECK(n.kind == SCOUTS_NOTIFY_DEVICE_GONE);
    CHECK_STR(n.device, DEV);
    CHECK_STR(n.user, "carol");
    CHECK(!n.instance && !n.proposal);

    CHECK(scouts_notify_parse("u|dave", &n) == 0);
    CHECK(n.kind == SCOUTS_NOTIFY_USER_ERASED);
    CHECK_STR(n.user, "dave");
    CHECK(!n.device);

    /* the user comes last and keeps every '|' after the fields before it */
    CHECK(scouts_notify_parse("q|a|b||c|", &n) == 0);
    CHECK_STR(n.user, "a|b||c|");
    CHECK(scouts_notify_parse("a|i|" PID "|" DEV "|x|y", &n) == 0);
    CHECK_STR(n.device, DEV);
    CHECK_STR(n.user, "x|y");
    CHECK(scouts_notify_parse("d|" DEV "||", &n) == 0);
    CHECK_STR(n.user, "|");
    CHECK(scouts_notify_parse("u|\xc3\xa9|", &n) == 0);
    CHECK_STR(n.user, "\xc3\xa9|");

    /* the payload is copied: the caller's text is left alone */
    char text[] = "d|" DEV "|erin";
    CHECK(scouts_notify_parse(text, &n) == 0);
    CHECK_STR(text, "d|" DEV "|erin");
}

static void malformed(void)
{
    static struct scouts_notify n;
    static const char *const bad[] = {
        "",
        "q",
        "q|",       /* no user */
        "qq|alice", /* the kind is one letter */
        "Q|alice",  /* kinds are lowercase */
        "x|alice",  /* unknown kind (a newer instance's): ignored */
        "|alice",
        "a|i|" PID "|" DEV,       /* no user */
        "a|i|" PID "|" DEV "|",   /* empty user */
        "a|i|" PID,               /* fields missing */
        "a||" PID "|" DEV "|bob", /* empty instance */
        "a|i||" DEV "|bob",       /* empty proposal */
        "a|i|" PID "||bob",       /* empty device */
        "a|",
        "d|" DEV,     /* no user */
        "d|" DEV "|", /* empty user */
        "d||carol",   /* empty device */
        "d|",
        "u|",
        "u",
    };
    int accepted = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (scouts_notify_parse(bad[i], &n) == 0)
            accepted++;
    CHECK(accepted == 0);
    CHECK(scouts_notify_parse(NULL, &n) == -1);

    /* PostgreSQL never delivers 8000 bytes or more; such text is not a payload */
    char *big = malloc(SCOUTS_NOTIFY_MAX + 2);
    if (!big) {
        CHECK(big != NULL);
        return;
    }
    memset(big, 'x', SCOUTS_NOTIFY_MAX + 1);
    memcpy(big, "q|", 2);
    big[SCOUTS_NOTIFY_MAX + 1] = '\0';
    CHECK(scouts_notify_parse(big, &n) == -1);
    big[SCOUTS_NOTIFY_MAX] = '\0';
    CHECK(scouts_notify_parse(big, &n) == -1);
    big[SCOUTS_NOTIFY_MAX - 1] = '\0'; /* 7999 bytes: the longest there can be */
    CHECK(scouts_notify_parse(big, &n) == 0 && strlen(n.user) == SCOUTS_NOTIFY_MAX - 3);
    free(big);
}

int main(void)
{
    kinds_agree_with_sql();
    well_formed();
    malformed();
    return unit_done();
}
