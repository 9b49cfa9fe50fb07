"""The Auth service: users, roles, permissions, tokens (etcd 3.4's RPCs and errors).

Changes go through the log with passwords already hashed here (bcrypt at
``--bcrypt-cost``, etcd's default 10), so every member stores the same hash.
``Authenticate`` checks the password on the member that receives it and hands out a
member-local token, like etcd's "simple" tokens (expiring ``--auth-token-ttl`` seconds
after their last use), or a JWT with ``--auth-token jwt,...``
(``keel_store.server.tokens``); clients send it as ``token`` metadata. Administration
needs the root role once authentication is enabled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import bcrypt

from keel_store.mvcc import auth, errors
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server.kv_service import Headers, auth_user, guarded, require_root
from keel_store.server.node import StoreNode


def _hash(password: str, cost: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


class AuthService(rpcgrpc.AuthServicer):  # type: ignore[misc]
    """Auth: enable/disable, authenticate, users and roles."""

    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self.headers = Headers(node)

    async def _change(self, kind: Kind, request: Any, context: Any) -> Any:
        require_root(self.node, context)
        resp = await self.node.propose(kind, request)
        self.headers.fill(resp.header)
        return resp

    async def _read(self, answer: Callable[[], Any], context: Any, *, self_ok: bool = False) -> Any:
        """``answer()`` after the permission check and the read barrier, as etcd: a
        user that may not read gets ``permission denied`` whether or not the user or
        role asked for exists, and the answer is taken at the linearized point."""
        if not self_ok:
            require_root(self.node, context)
        await self.node.read_barrier()
        resp = answer()
        self.headers.fill(resp.header)
        return resp

    @guarded
    async def AuthEnable(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.AUTH_ENABLE, request, context)

    @guarded
    async def AuthDisable(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.AUTH_DISABLE, request, context)

    @guarded
    async def Authenticate(self, request: Any, context: Any) -> Any:
        """Check the password (bcrypt, off the event loop) and mint a token."""
        store = self.node.sm.auth
        if not store.enabled:
            raise errors.AUTH_NOT_ENABLED
        await self.node.read_barrier()
        user = store.users.get(request.name)
        if user is None or user.no_password:
            raise auth.AUTH_FAILED
        ok = await asyncio.get_running_loop().run_in_executor(
            None, bcrypt.checkpw, request.password.encode(), user.password_hash
        )
        if not ok:
            raise auth.AUTH_FAILED
        token = self.node.tokens.assign(user.name, store.revision)
        resp = rpcpb.AuthenticateResponse(token=token)
        self.headers.fill(resp.header)
        return resp

    @guarded
    async def UserAdd(self, request: Any, context: Any) -> Any:
        req = rpcpb.AuthUserAddRequest()
        req.CopyFrom(request)
        if not req.options.no_password:
            req.password = await asyncio.get_running_loop().run_in_executor(
                None, _hash, request.password, self.node.config.bcrypt_cost
            )
        return await self._change(Kind.USER_ADD, req, context)

    @guarded
    async def UserChangePassword(self, request: Any, context: Any) -> Any:
        req = rpcpb.AuthUserChangePasswordRequest(name=request.name)
        req.password = await asyncio.get_running_loop().run_in_executor(
            None, _hash, request.password, self.node.config.bcrypt_cost
        )
        return await self._change(Kind.USER_CHANGE_PASSWORD, req, context)

    @guarded
    async def UserDelete(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.USER_DELETE, request, context)

    @guarded
    async def UserGrantRole(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.USER_GRANT_ROLE, request, context)

    @guarded
    async def UserRevokeRole(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.USER_REVOKE_ROLE, request, context)

    @guarded
    async def RoleAdd(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.ROLE_ADD, request, context)

    @guarded
    async def RoleDelete(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.ROLE_DELETE, request, context)

    @guarded
    async def RoleGrantPermission(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.ROLE_GRANT_PERMISSION, request, context)

    @guarded
    async def RoleRevokePermission(self, request: Any, context: Any) -> Any:
        return await self._change(Kind.ROLE_REVOKE_PERMISSION, request, context)

    @guarded
    async def UserGet(self, request: Any, context: Any) -> Any:
        """A user may read itself; anything else needs root (as etcd)."""
        own = auth_user(self.node, context) == request.name
        return await self._read(
            lambda: self.node.sm.auth.user_get(request.name), context, self_ok=own
        )

    @guarded
    async def UserList(self, request: Any, context: Any) -> Any:
        return await self._read(
            lambda: rpcpb.AuthUserListResponse(users=sorted(self.node.sm.auth.users)), context
        )

    @guarded
    async def RoleGet(self, request: Any, context: Any) -> Any:
        """A user may read the roles it holds; anything else needs root (as etcd)."""
        user = auth_user(self.node, context)
        holder = self.node.sm.auth.users.get(user or "")
        own = holder is not None and request.role in holder.roles
        return await self._read(
            lambda: self.node.sm.auth.role_get(request.role), context, self_ok=own
        )

    @guarded
    async def RoleList(self, request: Any, context: Any) -> Any:
        return await self._read(
            lambda: rpcpb.AuthRoleListResponse(roles=sorted(self.node.sm.auth.roles)), context
        )
