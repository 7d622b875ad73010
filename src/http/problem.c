#include "steward/problem.h"

#include <stdio.h>

struct status_text {
    int status;
    const char *slug;
    const char *title;
};

static const struct status_text texts[] = {
    {400, "bad-request", "Bad Request"},
    {401, "unauthorized", "Unauthorized"},
    {403, "forbidden", "Forbidden"},
    {404, "not-found", "Not Found"},
    {405, "method-not-allowed", "Method Not Allowed"},
    {409, "conflict", "Conflict"},
    {412, "precondition-failed", "Precondition Failed"},
    {413, "payload-too-large", "Payload Too Large"},
    {415, "unsupported-media-type", "Unsupported Media Type"},
    {422, "validation-failed", "Unprocessable Content"},
    {429, "quota-exceeded", "Too Many Requests"},
    {500, "internal", "Internal Server Error"},
    {503, "service-unavailable", "Service Unavailable"},
};

static const struct status_text *lookup(int status)
{
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        if (texts[i].status == status)
            return &texts[i];
    return NULL;
}

const char *problem_slug(int status)
{
    const struct status_text *t = lookup(status);
    return t ? t->slug : (status >= 500 ? "internal" : "bad-request");
}

const char *problem_title(int status)
{
    const struct status_text *t = lookup(status);
    return t ? t->title : (status >= 500 ? "Server Error" : "Client Error");
}

json_t *problem_new(int status, const char *slug, const char *detail)
{
    char type[96];
    snprintf(type, sizeof(type), "/problems/%s", slug ? slug : problem_slug(status));
    return json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title", problem_title(status),
                     "status", status, "detail", detail ? detail : problem_title(status));
}
