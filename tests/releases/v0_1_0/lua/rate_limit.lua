--[[ rate_limit: count one call against the app's rate limit, on its own.

Used where the limiter cannot share the command's script: on Redis Cluster its key
lives in another slot than the group's, and when a call fails validation before any
script runs. Atomic so that replicas counting at once never lose a call.

KEYS[1]  the app's rate-limit window, {ratelimit:<sdkappid>}
ARGV[1]  the app's limit in calls per second

Reply    {0}      within the limit
         {60007}  over the limit
]]
if over_rate_limit(KEYS[1], ARGV[1]) then return {60007} end
return {0}
