"""The commands: the endpoint that runs a call top to bottom (decode, authenticate,
authorize, validate, run one script, encode), the commands themselves, usersig checks,
access rules, rate limits and group listing.

It may import `service.http`, `service.storage`, `service.ops` and the vocabulary; never
`service.live` or `service.moving`.
"""
