"""The admin dashboard, mounted under /admin by ``edgectl.app.create_app``.

``web`` holds the parent blueprint with the guard (sessions, CSRF, headers); each area is a
child blueprint. The dashboard owns four tables of its own: users, sessions, login failures
(``accounts.py``) and the audit log (``audit.py``).
"""
from __future__ import annotations

from flask import Flask

from admin import auth, domains_views, lists, overview, shards_views
from admin.accounts import (ADMIN_LOGIN_FAILURES, ADMIN_SESSIONS, ADMIN_USERS, Devices,
                            LoginLimiter, Sessions, Users)
from admin.audit import ADMIN_AUDIT, AuditLog
from admin.summary import Summary
from admin.web import Admin, bp
from control.wiring import Services
from kit.web import provide

for _child in (auth.bp, overview.bp, domains_views.bp, lists.bp, shards_views.bp):
    bp.register_blueprint(_child)


def build(services: Services) -> Admin:
    settings, backend = services.settings, services.backend
    sessions, failures = backend.table(ADMIN_SESSIONS), backend.table(ADMIN_LOGIN_FAILURES)
    if services.sweeper is not None:
        for table in (sessions, failures):
            services.sweeper.add(table)
    clock = services.clock
    users = Users(backend.table(ADMIN_USERS), clock=clock, method=settings.admin_password_hash)
    return Admin(services=services, users=users,
                 devices=Devices(users, settings.encryption_keys),
                 sessions=Sessions(sessions, settings.admin_session_seconds, clock=clock),
                 limiter=LoginLimiter(failures, settings.admin_max_failures,
                                      settings.admin_lockout_seconds, clock=clock),
                 audit=AuditLog(backend.table(ADMIN_AUDIT), clock=clock),
                 cookie_secure=settings.admin_cookie_secure, summary=Summary(services))


def init_app(app: Flask, services: Services) -> None:
    provide(app, build(services))
    app.register_blueprint(bp)
