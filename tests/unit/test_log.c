#include <stdio.h>
#include <string.h>

#include "steward/log.h"
#include "unit.h"

int main(void)
{
    char buf[64];
    size_t n = log_escape(buf, 0, sizeof(buf), "a\"b\\c\nd\x01");
    CHECK(n == strlen("a\\\"b\\\\c\\nd\\u0001"));
    CHECK_STR(buf, "a\\\"b\\\\c\\nd\\u0001");
    char small[8];
    n = log_escape(small, 0, sizeof(small), "0123456789");
    CHECK(n < sizeof(small) && small[n] == '\0');

    char out[512] = {0};
    FILE *f = fmemopen(out, sizeof(out), "w");
    struct logger lg = {LOG_INFO, f};
    log_msg(&lg, LOG_DEBUG, "hidden", NULL);
    log_msg(&lg, LOG_WARN, "shown", "k", "v\"q", NULL);
    fclose(f);
    CHECK(strstr(out, "hidden") == NULL);
    CHECK(strstr(out, "\"level\":\"warn\"") && strstr(out, "\"msg\":\"shown\""));
    CHECK(strstr(out, "\"k\":\"v\\\"q\"") != NULL);
    CHECK(out[strlen(out) - 1] == '\n');
    enum log_level lvl;
    CHECK(log_level_parse("Error", &lvl) == 0 && lvl == LOG_ERROR);
    CHECK(log_level_parse("verbose", &lvl) == -1);
    return unit_done();
}
