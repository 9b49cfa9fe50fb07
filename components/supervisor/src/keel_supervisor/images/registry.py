"""A client for the OCI distribution API (v2): manifests, image indexes, blobs, and auth.

Auth follows the registry's ``WWW-Authenticate`` challenge: ``Basic`` sends the credentials,
``Bearer realm=...,service=...,scope=...`` fetches a token from the realm (with the credentials,
if any, as basic auth; anonymous otherwise) and retries with it. Redirects are followed, and the
Authorization header is dropped when a redirect leaves the registry's host (blob storage).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from rich.progress import Progress

from keel_supervisor.images import oci
from keel_supervisor.images.blobs import BlobStore, digest_bytes
from keel_supervisor.images.errors import ImageError, IncompleteTransfer, RegistryError
from keel_supervisor.images.reference import Reference, parse_reference

__all__ = ["FetchedManifest", "RegistryClient", "parse_reference"]

ACCEPT = ", ".join([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST])
_PARAM = re.compile(r'(\w+)="([^"]*)"')
_MAX_MANIFEST = 4 << 20
log = logging.getLogger("keel.supervisor.images.registry")


@dataclass
class FetchedManifest:
    """The image manifest chosen for this platform, verified against its digest."""

    manifest: bytes
    digest: str
    config: oci.Descriptor
    layers: list[oci.Descriptor]


class RegistryClient:
    """Talks to the registry serving one reference."""

    def __init__(
        self,
        ref: Reference,
        *,
        insecure: bool = False,
        auth: tuple[str, str] | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.ref = ref
        self.retries = retries
        self.backoff = backoff
        self.base = f"{'http' if insecure else 'https'}://{ref.endpoint}"
        self.auth = auth
        self.timeout = timeout
        self.authorization: str | None = None

    # -- HTTP --------------------------------------------------------------------------------
    def _send(
        self, url: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        for _hop in range(6):
            parts = urlsplit(url)
            conn_type = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = conn_type(parts.netloc, timeout=self.timeout)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except ssl.SSLError as exc:
                conn.close()
                raise RegistryError(
                    f"TLS with {parts.netloc} failed ({exc}); if it is a plain-HTTP registry, "
                    "pull with --insecure"
                ) from exc
            except OSError as exc:
                conn.close()
                raise RegistryError(
                    f"cannot reach registry {parts.netloc}: {exc}; is it running, and is the "
                    "address right?"
                ) from exc
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                target = urljoin(url, resp.getheader("Location", ""))
                resp.read()
                conn.close()
                if urlsplit(target).netloc != parts.netloc:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                url = target
                continue
            return conn, resp
        raise RegistryError(f"{url}: too many redirects")

    def _get(
        self, path: str, accept: str = "*/*"
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        url = self.base + path
        for attempt in range(2):
            headers = {"Accept": accept, "User-Agent": "keel-supervisor"}
            if self.authorization:
                headers["Authorization"] = self.authorization
            conn, resp = self._send(url, headers)
            if resp.status != 401 or attempt == 1:
                break
            challenge = resp.getheader("WWW-Authenticate", "")
            resp.read()
            conn.close()
            self._authenticate(challenge)
        if resp.status == 401:
            resp.read()
            conn.close()
            raise RegistryError(
                f"{self.ref.endpoint} refused access to {self.ref.name}: check the credentials "
                "(--creds user:password) and that the repository exists"
            )
        if resp.status != 200:
            body = resp.read(65536)
            conn.close()
            what = "not found" if resp.status == 404 else f"HTTP {resp.status}"
            raise RegistryError(
                f"{self.ref}: {what} on {self.ref.endpoint} ({_error_text(body)}); "
                "check the name and tag"
            )
        return conn, resp

    def _authenticate(self, challenge: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        params = dict(_PARAM.findall(rest))
        if scheme.lower() == "basic":
            if self.auth is None:
                raise RegistryError(
                    f"registry {self.ref.endpoint} needs a login: pass --creds user:password"
                )
            self.authorization = "Basic " + _basic(self.auth)
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise RegistryError(
                f"registry {self.ref.endpoint} asks for unsupported auth {challenge!r}"
            )
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or f"repository:{self.ref.repository}:pull"
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urlencode(query)
        headers = {"User-Agent": "keel-supervisor"}
        if self.auth is not None:
            headers["Authorization"] = "Basic " + _basic(self.auth)
        conn, resp = self._send(url, headers)
        try:
            body = resp.read(1 << 20)
        finally:
            conn.close()
        if resp.status != 200:
            raise RegistryError(
                f"token server {urlsplit(url).netloc} refused a token for {query['scope']} "
                f"(HTTP {resp.status}: {_error_text(body)}); check --creds"
            )
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {urlsplit(url).netloc} answered without a token")
        self.authorization = f"Bearer {token}"

    # -- API ---------------------------------------------------------------------------------
    def _manifest(self, obj: str, expect_digest: str | None) -> tuple[bytes, dict[str, Any], str]:
        conn, resp = self._get(f"/v2/{self.ref.repository}/manifests/{obj}", ACCEPT)
        try:
            data = resp.read(_MAX_MANIFEST + 1)
            content_type = resp.getheader("Content-Type", "").split(";")[0].strip()
            announced = resp.getheader("Docker-Content-Digest")
        finally:
            conn.close()
        if len(data) > _MAX_MANIFEST:
            raise RegistryError(f"{self.ref}: manifest larger than {_MAX_MANIFEST} bytes")
        digest = digest_bytes(data)
        for want in (expect_digest, announced):
            if want and want.startswith("sha256:") and want != digest:
                raise RegistryError(
                    f"{self.ref}: manifest hashes to {digest}, registry promised {want}"
                )
        where = f"{self.ref.name}@{digest}"
        doc = oci.parse_json(data, where)
        kind = oci.document_kind(doc, content_type)
        return data, doc, kind

    def fetch_manifest(self) -> FetchedManifest:
        """The manifest for this reference; an index is resolved to its linux/amd64 entry."""
        data, doc, kind = self._manifest(self.ref.object, self.ref.digest)
        for _depth in range(4):
            if kind != "index":
                break
            desc = oci.pick_platform(doc, str(self.ref))
            data, doc, kind = self._manifest(desc.digest, desc.digest)
        else:
            raise RegistryError(f"{self.ref}: image indexes nested too deeply")
        try:
            config, layers = oci.manifest_parts(doc, str(self.ref))
        except ImageError as exc:
            raise RegistryError(str(exc)) from exc
        return FetchedManifest(data, digest_bytes(data), config, layers)

    def fetch_blob(
        self, desc: oci.Descriptor, blobs: BlobStore, progress: Progress | None = None
    ) -> str:
        """Download a blob into ``blobs`` (verified), unless it is there already.

        A transfer that breaks off after it started is tried again (``self.retries`` times, with
        back-off); what arrived of a broken transfer is never stored.
        """
        broken = (IncompleteTransfer, http.client.HTTPException, ConnectionError, TimeoutError)
        for attempt in range(self.retries + 1):
            if blobs.has(desc.digest):
                return desc.digest
            try:
                return self._fetch_blob_once(desc, blobs, progress)
            except broken as exc:
                if attempt == self.retries:
                    if isinstance(exc, IncompleteTransfer):
                        raise
                    raise IncompleteTransfer(
                        f"{self.ref.name}@{desc.digest}: transfer broke off ({exc!r}) "
                        f"after {attempt + 1} attempts; nothing stored, try again"
                    ) from exc
                log.info(
                    "blob transfer broke off, retrying",
                    extra={"blob": desc.digest, "attempt": attempt + 1, "error": repr(exc)},
                )
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _fetch_blob_once(
        self, desc: oci.Descriptor, blobs: BlobStore, progress: Progress | None
    ) -> str:
        conn, resp = self._get(f"/v2/{self.ref.repository}/blobs/{desc.digest}")
        task = None
        if progress is not None:
            task = progress.add_task(f"{self.ref.name} {desc.digest[7:19]}", total=desc.size)
        try:
            return blobs.put_stream(
                resp,
                desc.digest,
                desc.size,
                source=f"{self.ref.name}@{desc.digest}",
                advance=(lambda n: progress.advance(task, n))
                if progress and task is not None
                else None,
            )
        finally:
            conn.close()
            if progress is not None and task is not None:
                progress.remove_task(task)


def _basic(auth: tuple[str, str]) -> str:
    return base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


def _error_text(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or "no details"
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip() or "no details"
