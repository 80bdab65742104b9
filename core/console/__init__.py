"""The tether console: server-rendered pages over the team registry (``tether registry serve``, ``tether console``).

Services by namespace and owner, a service's versions (config diff, code snapshot files, tags, rollback), its
access (grant, revoke), usage charts and lineage; recent calls, and a call's live log tail. Auth: a bearer token
once on the login page, then an HttpOnly SameSite session cookie, and a CSRF token on every form that changes
something. HTML, a little JavaScript and inline SVG from this package: no build step, nothing from a CDN.
"""
