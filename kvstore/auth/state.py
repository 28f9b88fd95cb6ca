"""The replicated auth store: users, roles, the enabled flag, the revision.

Changed only by applying Raft entries (``AuthState.apply``), deterministically:
every member holds the same state at the same log index. It is persisted as
one ``kvstorepb.AuthState`` record in the state machine's application
metadata, inside the apply batch's transaction, so it travels with snapshots.

Semantics are etcd 3.4's auth store (auth/store.go):

* the revision starts at 1 and goes up by one on every change that alters
  users or roles and on AuthDisable (AuthEnable and no-op grants do not);
* ``root`` can be neither deleted nor lose the ``root`` role while auth is
  enabled; the ``root`` role cannot be deleted then either; granting the role
  ``root`` does not need the role to exist;
* a user's roles and a role's permissions are kept sorted (permissions by
  key); granting a permission with the same key and range end replaces its type.
"""
from __future__ import annotations

from typing import Optional

import grpc

from .. import errors
from ..errors import EtcdError
from ..pb import auth_pb2, internal_pb2, rpc_pb2
from .perms import READ, UserPerms

META_KEY = b"auth"
ROOT = "root"

# etcd's auth package errors that its Maintenance API returns unconverted
# (gRPC code UNKNOWN, message "auth: ...").
RAW_AUTH_MESSAGES = {
    errors.PERMISSION_DENIED.message: "auth: permission denied",
    errors.USER_EMPTY.message: "auth: user name is empty",
    errors.USER_NOT_FOUND.message: "auth: user not found",
    errors.INVALID_AUTH_TOKEN.message: "auth: invalid auth token",
    errors.AUTH_OLD_REVISION.message: "auth: revision in header is old",
}
# etcd's CheckPassword for a user added with --no-password (also unconverted).
NO_PASSWORD_USER = EtcdError(
    grpc.StatusCode.UNKNOWN, "auth: authentication failed, password was given for no password user"
)

# InternalRequest kinds that change the auth store.
KINDS = frozenset(
    {
        "auth_enable",
        "auth_disable",
        "auth_authenticate",
        "auth_user_add",
        "auth_user_delete",
        "auth_user_change_password",
        "auth_user_grant_role",
        "auth_user_revoke_role",
        "auth_role_add",
        "auth_role_delete",
        "auth_role_grant_permission",
        "auth_role_revoke_permission",
    }
)
# The ones that need the proposer to be root while auth is enabled (etcd's
# needAdminPermission).
ADMIN_KINDS = KINDS - {"auth_authenticate"}


class Stale(Exception):
    """Authenticate applied after the auth store changed: check again."""


class AuthState:
    def __init__(self) -> None:
        self.enabled = False
        self.revision = 1
        self.users: dict[str, auth_pb2.User] = {}
        self.roles: dict[str, auth_pb2.Role] = {}
        self._perms: dict[str, UserPerms] = {}

    # -- persistence ----------------------------------------------------------
    @classmethod
    def load(cls, raw: Optional[bytes]) -> "AuthState":
        st = cls()
        if raw:
            rec = internal_pb2.AuthState()
            rec.ParseFromString(raw)
            st.enabled = rec.enabled
            st.revision = rec.revision or 1
            for u in rec.users:
                st.users[u.name.decode()] = u
            for r in rec.roles:
                st.roles[r.name.decode()] = r
        st._rebuild()
        return st

    def dump(self) -> bytes:
        rec = internal_pb2.AuthState(
            enabled=self.enabled,
            revision=self.revision,
            users=[self.users[n] for n in sorted(self.users)],
            roles=[self.roles[n] for n in sorted(self.roles)],
        )
        return rec.SerializeToString(deterministic=True)

    def _rebuild(self) -> None:
        """etcd's refreshRangePermCache: merged permissions of every user."""
        cache = {}
        for name, u in self.users.items():
            perms: list[auth_pb2.Permission] = []
            for role in u.roles:
                r = self.roles.get(role)
                if r is not None:
                    perms.extend(r.keyPermission)
            cache[name] = UserPerms(perms, root=ROOT in u.roles)
        self._perms = cache

    def _commit(self) -> None:
        self.revision += 1
        self._rebuild()

    # -- queries --------------------------------------------------------------
    def user_names(self) -> list[str]:
        return sorted(self.users, key=lambda n: n.encode())

    def role_names(self) -> list[str]:
        return sorted(self.roles, key=lambda n: n.encode())

    def has_role(self, user: str, role: str) -> bool:
        u = self.users.get(user)
        return u is not None and role in u.roles

    def is_root(self, user: str) -> bool:
        return self.has_role(user, ROOT)

    def admin_error(self, user: str) -> EtcdError | None:
        """etcd's IsAdminPermitted (only meaningful while enabled)."""
        if not self.enabled:
            return None
        if not user:
            return errors.USER_EMPTY
        u = self.users.get(user)
        if u is None:
            return errors.USER_NOT_FOUND
        if ROOT not in u.roles:
            return errors.PERMISSION_DENIED
        return None

    def op_error(self, user: str, revision: int, perm_type: int, key: bytes, range_end: bytes = b"") -> EtcdError | None:
        """etcd's isOpPermitted: the request's identity and auth revision
        against this state. ``revision`` 0 means "no user given"."""
        if not self.enabled:
            return None
        if revision == 0 or not user:
            return errors.USER_EMPTY
        if revision < self.revision:
            return errors.AUTH_OLD_REVISION
        perms = self._perms.get(user)
        if perms is None or not perms.allows(perm_type, key, range_end):
            return errors.PERMISSION_DENIED
        return None

    def allows(self, user: str, perm_type: int, key: bytes, range_end: bytes = b"") -> bool:
        """Permission only (no revision, enabled flag or empty-user logic)."""
        perms = self._perms.get(user)
        return perms is not None and perms.allows(perm_type, key, range_end)

    # -- changes (deterministic; raise EtcdError) -------------------------------
    def apply(self, kind: str, msg, header: internal_pb2.AuthHeader | None):
        """Apply one auth request; returns etcd's response message (header
        not filled). ``header`` None: proposed by the server itself."""
        if kind in ADMIN_KINDS and header is not None and not header.internal:
            err = self.admin_error(header.username)
            if err is not None:
                raise err
        return getattr(self, "_" + kind)(msg)

    def _auth_enable(self, _: rpc_pb2.AuthEnableRequest) -> rpc_pb2.AuthEnableResponse:
        if not self.enabled:
            root = self.users.get(ROOT)
            if root is None:
                raise errors.ROOT_USER_NOT_EXIST
            if ROOT not in root.roles:
                raise errors.ROOT_ROLE_NOT_EXIST
            self.enabled = True  # no revision change, as etcd
        return rpc_pb2.AuthEnableResponse()

    def _auth_disable(self, _: rpc_pb2.AuthDisableRequest) -> rpc_pb2.AuthDisableResponse:
        if self.enabled:
            self.enabled = False
            self._commit()
        return rpc_pb2.AuthDisableResponse()

    def _auth_authenticate(self, a: internal_pb2.AuthAuthenticate) -> rpc_pb2.AuthenticateResponse:
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED
        u = self.users.get(a.name)
        if u is None or u.options.no_password:
            raise errors.AUTH_FAILED
        if a.checked_revision != self.revision:
            raise Stale()
        return rpc_pb2.AuthenticateResponse()

    def _auth_user_add(self, a: internal_pb2.AuthUserAdd) -> rpc_pb2.AuthUserAddResponse:
        if not a.name:
            raise errors.USER_EMPTY
        if a.name in self.users:
            raise errors.USER_ALREADY_EXIST
        self.users[a.name] = auth_pb2.User(
            name=a.name.encode(),
            password=b"" if a.no_password else a.password_hash,
            options=auth_pb2.UserAddOptions(no_password=a.no_password),
        )
        self._commit()
        return rpc_pb2.AuthUserAddResponse()

    def _auth_user_delete(self, r: rpc_pb2.AuthUserDeleteRequest) -> rpc_pb2.AuthUserDeleteResponse:
        if self.enabled and r.name == ROOT:
            raise errors.INVALID_AUTH_MGMT
        if r.name not in self.users:
            raise errors.USER_NOT_FOUND
        del self.users[r.name]
        self._commit()
        return rpc_pb2.AuthUserDeleteResponse()

    def _auth_user_change_password(self, a: internal_pb2.AuthUserChangePassword) -> rpc_pb2.AuthUserChangePasswordResponse:
        u = self.users.get(a.name)
        if u is None:
            raise errors.USER_NOT_FOUND
        u.password = a.password_hash
        self._commit()
        return rpc_pb2.AuthUserChangePasswordResponse()

    def _auth_user_grant_role(self, r: rpc_pb2.AuthUserGrantRoleRequest) -> rpc_pb2.AuthUserGrantRoleResponse:
        u = self.users.get(r.user)
        if u is None:
            raise errors.USER_NOT_FOUND
        if r.role != ROOT and r.role not in self.roles:
            raise errors.ROLE_NOT_FOUND
        if r.role not in u.roles:
            roles = sorted(list(u.roles) + [r.role], key=lambda n: n.encode())
            del u.roles[:]
            u.roles.extend(roles)
            self._commit()
        return rpc_pb2.AuthUserGrantRoleResponse()

    def _auth_user_revoke_role(self, r: rpc_pb2.AuthUserRevokeRoleRequest) -> rpc_pb2.AuthUserRevokeRoleResponse:
        if self.enabled and r.name == ROOT and r.role == ROOT:
            raise errors.INVALID_AUTH_MGMT
        u = self.users.get(r.name)
        if u is None:
            raise errors.USER_NOT_FOUND
        if r.role not in u.roles:
            raise errors.ROLE_NOT_GRANTED
        roles = [x for x in u.roles if x != r.role]
        del u.roles[:]
        u.roles.extend(roles)
        self._commit()
        return rpc_pb2.AuthUserRevokeRoleResponse()

    def _auth_role_add(self, r: rpc_pb2.AuthRoleAddRequest) -> rpc_pb2.AuthRoleAddResponse:
        if not r.name:
            raise errors.ROLE_EMPTY
        if r.name in self.roles:
            raise errors.ROLE_ALREADY_EXIST
        self.roles[r.name] = auth_pb2.Role(name=r.name.encode())
        self._commit()
        return rpc_pb2.AuthRoleAddResponse()

    def _auth_role_delete(self, r: rpc_pb2.AuthRoleDeleteRequest) -> rpc_pb2.AuthRoleDeleteResponse:
        if self.enabled and r.role == ROOT:
            raise errors.INVALID_AUTH_MGMT
        if r.role not in self.roles:
            raise errors.ROLE_NOT_FOUND
        del self.roles[r.role]
        for u in self.users.values():
            if r.role in u.roles:
                roles = [x for x in u.roles if x != r.role]
                del u.roles[:]
                u.roles.extend(roles)
        self._commit()
        return rpc_pb2.AuthRoleDeleteResponse()

    def _auth_role_grant_permission(
        self, r: rpc_pb2.AuthRoleGrantPermissionRequest
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        role = self.roles.get(r.name)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        for p in role.keyPermission:
            if p.key == r.perm.key and p.range_end == r.perm.range_end:
                p.permType = r.perm.permType
                break
        else:
            perms = list(role.keyPermission) + [
                auth_pb2.Permission(permType=r.perm.permType, key=r.perm.key, range_end=r.perm.range_end)
            ]
            perms.sort(key=lambda p: p.key)  # stable, as etcd's sort of equal keys is not
            del role.keyPermission[:]
            role.keyPermission.extend(perms)
        self._commit()
        return rpc_pb2.AuthRoleGrantPermissionResponse()

    def _auth_role_revoke_permission(
        self, r: rpc_pb2.AuthRoleRevokePermissionRequest
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        role = self.roles.get(r.role)
        if role is None:
            raise errors.ROLE_NOT_FOUND
        keep = [p for p in role.keyPermission if not (p.key == r.key and p.range_end == r.range_end)]
        if len(keep) == len(role.keyPermission):
            raise errors.PERMISSION_NOT_GRANTED
        del role.keyPermission[:]
        role.keyPermission.extend(keep)
        self._commit()
        return rpc_pb2.AuthRoleRevokePermissionResponse()


__all__ = ["AuthState", "KINDS", "ADMIN_KINDS", "META_KEY", "ROOT", "READ", "Stale", "RAW_AUTH_MESSAGES"]
