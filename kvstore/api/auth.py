"""etcdserverpb.Auth over gRPC, and the Watch service's permission checks.

Calls are authorised in ``kvstore.api.authz`` (``guard`` is re-exported here
for the front ends that call servicers directly).

``AuthWatchService`` is the Watch service with etcd's per-create check: a
create the caller may not read is answered, in order, with a created and
canceled response (watch id -1) whose cancel_reason is the gRPC error
string, exactly as etcd 3.4 does.
"""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import grpc

from .. import errors
from ..auth import ANONYMOUS, Auth, AuthInfo
from ..errors import EtcdError
from ..pb import internal_pb2, rpc_pb2, rpc_pb2_grpc
from ..server import KvServer
from .authz import credentials, guard
from .common import unary
from .watch import WatchService

log = logging.getLogger("kvstore.api.auth")

__all__ = ["AuthService", "AuthWatchService", "go_status_string", "guard"]  # guard: kvstore.api.authz's

# Go's names of gRPC codes, for watch cancel reasons ("rpc error: code = ...").
_GO_CODE = {
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
}


def go_status_string(e: EtcdError) -> str:
    return f"rpc error: code = {_GO_CODE.get(e.code, e.code.name)} desc = {e.message}"


class AuthWatchService(WatchService):
    """Watch with etcd's permission check of each create request."""

    async def Watch(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        auth = self.s.auth
        creds = credentials(context, auth) if auth is not None else (None, None)
        await super().Watch(_Tagged(request_iterator, creds), context)

    async def _read(self, request_iterator, stream) -> None:
        creds = getattr(request_iterator, "creds", (None, None))
        await super()._read(self._checked(request_iterator, stream, creds), stream)

    async def _checked(self, request_iterator, stream, creds) -> AsyncIterator[rpc_pb2.WatchRequest]:
        auth = self.s.auth
        async for req in request_iterator:
            if auth.enabled and req.WhichOneof("request_union") == "create_request":
                try:
                    info = await auth.resolve(*creds)
                    err = auth.watch_error(info, req.create_request)
                except EtcdError as e:
                    err = e
                if err is not None:
                    stream._refuse(stream.hub.rev, go_status_string(err))
                    continue
            yield req


class _Tagged:
    """A request iterator that carries the stream's credentials along."""

    __slots__ = ("_it", "creds")

    def __init__(self, it: Any, creds: tuple[str | None, str | None]) -> None:
        self._it = it
        self.creds = creds

    def __aiter__(self):
        return self._it.__aiter__()


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, server: KvServer) -> None:
        self.s = server

    async def _propose(self, **kw: Any) -> Any:
        res = await self.s.propose(internal_pb2.InternalRequest(**kw))
        resp = res.response
        resp.header.CopyFrom(self.s.header(res.revision))
        return resp

    def _caller(self) -> AuthInfo:
        return Auth.current() or ANONYMOUS

    @unary
    async def AuthEnable(self, request: rpc_pb2.AuthEnableRequest, context) -> rpc_pb2.AuthEnableResponse:
        return await self._propose(auth_enable=request)

    @unary
    async def AuthDisable(self, request: rpc_pb2.AuthDisableRequest, context) -> rpc_pb2.AuthDisableResponse:
        return await self._propose(auth_disable=request)

    @unary
    async def Authenticate(self, request: rpc_pb2.AuthenticateRequest, context) -> rpc_pb2.AuthenticateResponse:
        return await self.s.auth.authenticate(request.name, request.password)

    @unary
    async def UserAdd(self, request: rpc_pb2.AuthUserAddRequest, context) -> rpc_pb2.AuthUserAddResponse:
        if not request.name:
            raise errors.USER_EMPTY
        no_password = request.options.no_password
        hashed = b"" if no_password else await self.s.auth.hash_password(request.password)
        return await self._propose(
            auth_user_add=internal_pb2.AuthUserAdd(name=request.name, password_hash=hashed, no_password=no_password)
        )

    @unary
    async def UserGet(self, request: rpc_pb2.AuthUserGetRequest, context) -> rpc_pb2.AuthUserGetResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        me = self._caller().user
        err = st.admin_error(me)
        if err is not None and request.name != me:
            raise err
        u = st.users.get(request.name)
        if u is None:
            raise errors.USER_NOT_FOUND
        return rpc_pb2.AuthUserGetResponse(header=self.s.header(), roles=list(u.roles))

    @unary
    async def UserList(self, request: rpc_pb2.AuthUserListRequest, context) -> rpc_pb2.AuthUserListResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        err = st.admin_error(self._caller().user)
        if err is not None:
            raise err
        return rpc_pb2.AuthUserListResponse(header=self.s.header(), users=st.user_names())

    @unary
    async def UserDelete(self, request: rpc_pb2.AuthUserDeleteRequest, context) -> rpc_pb2.AuthUserDeleteResponse:
        return await self._propose(auth_user_delete=request)

    @unary
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        hashed = await self.s.auth.hash_password(request.password)
        return await self._propose(
            auth_user_change_password=internal_pb2.AuthUserChangePassword(name=request.name, password_hash=hashed)
        )

    @unary
    async def UserGrantRole(self, request: rpc_pb2.AuthUserGrantRoleRequest, context) -> rpc_pb2.AuthUserGrantRoleResponse:
        return await self._propose(auth_user_grant_role=request)

    @unary
    async def UserRevokeRole(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context
    ) -> rpc_pb2.AuthUserRevokeRoleResponse:
        return await self._propose(auth_user_revoke_role=request)

    @unary
    async def RoleAdd(self, request: rpc_pb2.AuthRoleAddRequest, context) -> rpc_pb2.AuthRoleAddResponse:
        return await self._propose(auth_role_add=request)

    @unary
    async def RoleGet(self, request: rpc_pb2.AuthRoleGetRequest, context) -> rpc_pb2.AuthRoleGetResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        me = self._caller().user
        err = st.admin_error(me)
        if err is not None and not st.has_role(me, request.role):
            raise err
        r = st.roles.get(request.role)
        if r is None:
            raise errors.ROLE_NOT_FOUND
        return rpc_pb2.AuthRoleGetResponse(header=self.s.header(), perm=list(r.keyPermission))

    @unary
    async def RoleList(self, request: rpc_pb2.AuthRoleListRequest, context) -> rpc_pb2.AuthRoleListResponse:
        await self.s.read_barrier()
        st = self.s.auth.state
        err = st.admin_error(self._caller().user)
        if err is not None:
            raise err
        return rpc_pb2.AuthRoleListResponse(header=self.s.header(), roles=st.role_names())

    @unary
    async def RoleDelete(self, request: rpc_pb2.AuthRoleDeleteRequest, context) -> rpc_pb2.AuthRoleDeleteResponse:
        return await self._propose(auth_role_delete=request)

    @unary
    async def RoleGrantPermission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        return await self._propose(auth_role_grant_permission=request)

    @unary
    async def RoleRevokePermission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        return await self._propose(auth_role_revoke_permission=request)
