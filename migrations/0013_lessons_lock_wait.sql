-- The journal never delays the request that triggers it: lessons_record() no longer sets
-- its own lock_timeout (1 s since 0002), which overrode whatever its caller set. Each
-- caller now sets its limits around the call instead (src/lessons/lessons.c): a lesson
-- steward records on its own behalf waits a few milliseconds for a lock and otherwise
-- goes to the retry queue; POST /v1/lessons keeps waiting up to 1 s.
ALTER FUNCTION lessons_record(text, text, text, text, text, text, text, text, text, text,
                              text, text, text, text, json, integer)
    RESET lock_timeout;
