"""Route policies (SPEC §3 "Policies"): rate limit, CORS, IP rules, header transforms, tracing.

See base.py for the hook phases and docs/gateway-policies.md for the contract.
"""
