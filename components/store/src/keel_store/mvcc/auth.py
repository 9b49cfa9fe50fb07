"""Users, roles and key permissions: etcd's auth store, as part of the state machine.

Everything here is replicated through the log and deterministic: passwords arrive
already hashed (bcrypt, by the member that received the request), so applying a
command never draws a random salt. Tokens are not here: they are member-local, as
etcd's "simple" tokens are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keel_store.mvcc.errors import Code, EtcdError
from keel_store.pb import authpb, rpcpb

ROOT = "root"


def _e(code: Code, message: str) -> EtcdError:
    return EtcdError(code, message)


ROOT_USER_MISSING = _e(Code.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ROOT_ROLE_MISSING = _e(Code.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
USER_EXISTS = _e(Code.FAILED_PRECONDITION, "etcdserver: user name already exists")
USER_EMPTY = _e(Code.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_NOT_FOUND = _e(Code.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_EXISTS = _e(Code.FAILED_PRECONDITION, "etcdserver: role name already exists")
ROLE_NOT_FOUND = _e(Code.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_EMPTY = _e(Code.INVALID_ARGUMENT, "etcdserver: role name is empty")
AUTH_FAILED = _e(
    Code.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password"
)
ROLE_NOT_GRANTED = _e(Code.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _e(
    Code.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
INVALID_AUTH_MGMT = _e(Code.INVALID_ARGUMENT, "etcdserver: invalid auth management")

READ, WRITE, READWRITE = (
    authpb.Permission.READ,
    authpb.Permission.WRITE,
    authpb.Permission.READWRITE,
)


@dataclass(slots=True)
class User:
    name: str
    password_hash: bytes
    roles: set[str] = field(default_factory=set)
    no_password: bool = False


@dataclass(slots=True)
class Perm:
    type: int
    key: bytes
    range_end: bytes

    def covers(self, key: bytes, range_end: bytes, write: bool) -> bool:
        """Does this permission allow the request ``[key, range_end)`` (read or write)?"""
        if self.type not in ((WRITE, READWRITE) if write else (READ, READWRITE)):
            return False
        if not self.range_end:
            return not range_end and key == self.key
        if key < self.key:
            return False
        if self.range_end == b"\0":
            return True
        if not range_end:
            return key < self.range_end
        return range_end != b"\0" and range_end <= self.range_end


class AuthStore:
    """Users, roles, permissions and whether authentication is on."""

    def __init__(self) -> None:
        self.enabled = False
        self.users: dict[str, User] = {}
        self.roles: dict[str, list[Perm]] = {}
        self.revision = 1
        """etcd's auth revision: 1 in a new store (etcd's ``NewAuthStore`` commits it),
        bumped by every change that succeeds and changes something, but not by
        enabling (etcd's ``AuthEnable`` does not commit it). A JWT carries the
        revision it was issued at and is refused once it is older."""
        self.flag_stored = False
        """Whether etcd would hold an ``auth/authEnabled`` row: written by the first
        enable or disable that does something, absent in a store that never had one."""
        self._bump = True

    # --- queries --------------------------------------------------------------------------

    def is_root(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and ROOT in u.roles

    def allowed(self, user: str, key: bytes, range_end: bytes, write: bool) -> bool:
        """Permission check for one key or range; ``root`` may do anything."""
        u = self.users.get(user)
        if u is None:
            return False
        if ROOT in u.roles:
            return True
        return any(
            p.covers(key, range_end, write) for role in u.roles for p in self.roles.get(role, ())
        )

    # --- commands (applied through the log) ---------------------------------------------

    def apply(self, req: object) -> object:
        """Apply one auth request message; returns its response (without header).

        The revision moves as etcd's: not on a refused request, nor on one that
        changes nothing (enabling again, disabling again, granting a held role).
        """
        self._bump = True
        name = type(req).__name__
        resp = getattr(self, "_" + name)(req)
        if self._bump:
            self.revision += 1
        return resp

    def _AuthEnableRequest(self, req: rpcpb.AuthEnableRequest) -> object:
        self._bump = False
        if self.enabled:
            return rpcpb.AuthEnableResponse()
        root = self.users.get(ROOT)
        if root is None:
            raise ROOT_USER_MISSING
        if ROOT not in root.roles:
            raise ROOT_ROLE_MISSING
        self.enabled = self.flag_stored = True
        return rpcpb.AuthEnableResponse()

    def _AuthDisableRequest(self, req: rpcpb.AuthDisableRequest) -> object:
        if not self.enabled:
            self._bump = False
            return rpcpb.AuthDisableResponse()
        self.enabled = False
        self.flag_stored = True
        return rpcpb.AuthDisableResponse()

    def _AuthUserAddRequest(self, req: rpcpb.AuthUserAddRequest) -> object:
        if not req.name:
            raise USER_EMPTY
        if req.name in self.users:
            raise USER_EXISTS
        self.users[req.name] = User(
            req.name, req.password.encode(), no_password=req.options.no_password
        )
        return rpcpb.AuthUserAddResponse()

    def _AuthUserDeleteRequest(self, req: rpcpb.AuthUserDeleteRequest) -> object:
        if self.enabled and req.name == ROOT:
            raise INVALID_AUTH_MGMT
        if self.users.pop(req.name, None) is None:
            raise USER_NOT_FOUND
        return rpcpb.AuthUserDeleteResponse()

    def _AuthUserChangePasswordRequest(self, req: rpcpb.AuthUserChangePasswordRequest) -> object:
        user = self.users.get(req.name)
        if user is None:
            raise USER_NOT_FOUND
        user.password_hash = req.password.encode()
        return rpcpb.AuthUserChangePasswordResponse()

    def _AuthUserGrantRoleRequest(self, req: rpcpb.AuthUserGrantRoleRequest) -> object:
        user = self.users.get(req.user)
        if user is None:
            raise USER_NOT_FOUND
        if req.role != ROOT and req.role not in self.roles:
            raise ROLE_NOT_FOUND
        if req.role in user.roles:
            self._bump = False
        user.roles.add(req.role)
        return rpcpb.AuthUserGrantRoleResponse()

    def _AuthUserRevokeRoleRequest(self, req: rpcpb.AuthUserRevokeRoleRequest) -> object:
        if self.enabled and req.name == ROOT and req.role == ROOT:
            raise INVALID_AUTH_MGMT
        user = self.users.get(req.name)
        if user is None:
            raise USER_NOT_FOUND
        if req.role not in user.roles:
            raise ROLE_NOT_GRANTED
        user.roles.discard(req.role)
        return rpcpb.AuthUserRevokeRoleResponse()

    def _AuthRoleAddRequest(self, req: rpcpb.AuthRoleAddRequest) -> object:
        if not req.name:
            raise ROLE_EMPTY
        if req.name in self.roles:
            raise ROLE_EXISTS
        self.roles[req.name] = []
        return rpcpb.AuthRoleAddResponse()

    def _AuthRoleDeleteRequest(self, req: rpcpb.AuthRoleDeleteRequest) -> object:
        if self.enabled and req.role == ROOT:
            raise INVALID_AUTH_MGMT
        if self.roles.pop(req.role, None) is None:
            raise ROLE_NOT_FOUND
        for user in self.users.values():
            user.roles.discard(req.role)
        return rpcpb.AuthRoleDeleteResponse()

    def _AuthRoleGrantPermissionRequest(self, req: rpcpb.AuthRoleGrantPermissionRequest) -> object:
        perms = self.roles.get(req.name)
        if perms is None:
            raise ROLE_NOT_FOUND
        new = Perm(req.perm.permType, req.perm.key, req.perm.range_end)
        for i, p in enumerate(perms):
            if (p.key, p.range_end) == (new.key, new.range_end):
                perms[i] = new
                break
        else:
            perms.append(new)
            perms.sort(key=lambda p: (p.key, p.range_end))
        return rpcpb.AuthRoleGrantPermissionResponse()

    def _AuthRoleRevokePermissionRequest(
        self, req: rpcpb.AuthRoleRevokePermissionRequest
    ) -> object:
        perms = self.roles.get(req.role)
        if perms is None:
            raise ROLE_NOT_FOUND
        kept = [p for p in perms if (p.key, p.range_end) != (req.key, req.range_end)]
        if len(kept) == len(perms):
            raise PERMISSION_NOT_GRANTED
        self.roles[req.role] = kept
        return rpcpb.AuthRoleRevokePermissionResponse()

    # --- reads --------------------------------------------------------------------------------

    def user_get(self, name: str) -> rpcpb.AuthUserGetResponse:
        user = self.users.get(name)
        if user is None:
            raise USER_NOT_FOUND
        return rpcpb.AuthUserGetResponse(roles=sorted(user.roles))

    def role_get(self, name: str) -> rpcpb.AuthRoleGetResponse:
        """The role's permissions; ``root`` too is not found until a role of that name
        is added (etcd 3.4: granting the root role needs no such role)."""
        perms = self.roles.get(name)
        if perms is None:
            raise ROLE_NOT_FOUND
        resp = rpcpb.AuthRoleGetResponse()
        for p in perms:
            resp.perm.add(permType=p.type, key=p.key, range_end=p.range_end)
        return resp

    # --- snapshots ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "flag_stored": self.flag_stored,
            "revision": self.revision,
            "users": [
                [u.name, u.password_hash.decode(), sorted(u.roles), u.no_password]
                for u in sorted(self.users.values(), key=lambda u: u.name)
            ],
            "roles": {
                name: [[p.type, p.key.hex(), p.range_end.hex()] for p in perms]
                for name, perms in sorted(self.roles.items())
            },
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> AuthStore:
        store = cls()
        store.enabled = bool(doc.get("enabled"))
        store.flag_stored = bool(doc.get("flag_stored", store.enabled))
        store.revision = int(doc.get("revision", 1))  # type: ignore[call-overload]
        for name, pw, roles, no_pw in doc.get("users", []):  # type: ignore[attr-defined]
            store.users[name] = User(name, pw.encode(), set(roles), no_pw)
        for name, perms in doc.get("roles", {}).items():  # type: ignore[attr-defined]
            store.roles[name] = [Perm(t, bytes.fromhex(k), bytes.fromhex(e)) for t, k, e in perms]
        return store
