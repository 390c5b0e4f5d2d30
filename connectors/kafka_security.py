"""How a Kafka client authenticates and encrypts: one frozen :class:`KafkaSecurity` per sink
or source, shared by the sink's producers and topic admin (in the forwarder processes) and the
source's consumers.

Guarantees:

* Checked when the flow is built (:meth:`KafkaSecurity.problems`): an unknown protocol or
  mechanism, a missing file, a client certificate without its key, SASL without a user name
  or password, a password given as a literal: one line each naming the option and the fix.
* Secrets never sit in the flow: a password comes only from an environment variable
  (``*_env=``) or a file (``*_file=``), read when a client is made
  (:meth:`KafkaSecurity.client_config`). The object holds their names, never their values,
  so ``describe()`` (``inspect --json``, ``plan.json``), logs and ``repr`` cannot show them.
* A connection refused for a security reason (wrong password, untrusted certificate, missing
  client certificate, hostname mismatch) is recognised from kafka-python's error text
  (:func:`refusal`) and explained in one line (:meth:`KafkaSecurity.explain`): such an error
  does not go away by retrying.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: the kinds of refusal :func:`refusal` recognises
AUTH, UNTRUSTED, HOSTNAME, CLIENT_CERT, MECHANISM, NOT_TLS = (
    "auth",
    "untrusted",
    "hostname",
    "client_cert",
    "mechanism",
    "not_tls",
)

#: the security options of kafka.sink() and kafka.source(), as keyword arguments
OPTIONS = (
    "security_protocol",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password_env",
    "ssl_key_password_file",
    "ssl_check_hostname",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password_env",
    "sasl_password_file",
)

#: kafka-python options that carry security settings: given in ``producer_options`` they
#: would bypass the checks here (and topic creation would ignore them); the named option to use
RAW_OPTIONS = {
    "security_protocol": "security_protocol",
    "ssl_context": "ssl_cafile/ssl_certfile/ssl_keyfile",
    "ssl_cafile": "ssl_cafile",
    "ssl_certfile": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
    "ssl_password": "ssl_key_password_env or ssl_key_password_file",
    "ssl_check_hostname": "ssl_check_hostname",
    "sasl_mechanism": "sasl_mechanism",
    "sasl_plain_username": "sasl_username",
    "sasl_plain_password": "sasl_password_env or sasl_password_file",
}


class SecretError(ValueError):
    """A secret that cannot be read (its variable is unset, its file unreadable)."""


@dataclass(frozen=True)
class KafkaSecurity:
    """The security options of one Kafka client, as given (file paths, secret *names*)."""

    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password_env: str | None = None
    ssl_key_password_file: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    sasl_password_file: str | None = None
    #: names of literal secrets that were passed (refused by problems(); values not kept)
    refused_literals: tuple[str, ...] = ()

    @classmethod
    def of(cls, options: dict[str, Any], literals: dict[str, Any] | None = None) -> KafkaSecurity:
        """From keyword arguments; ``literals`` are password arguments given as values
        (``sasl_password=``, ``ssl_password=``): only their names are kept, to refuse them."""
        given = tuple(sorted(k for k, v in (literals or {}).items() if v is not None))
        protocol = options.get("security_protocol") or "PLAINTEXT"
        if isinstance(protocol, str):
            protocol = protocol.strip().upper()
        mechanism = options.get("sasl_mechanism")
        if isinstance(mechanism, str):
            mechanism = mechanism.strip().upper()
        rest: dict[str, Any] = {
            k: options.get(k) for k in OPTIONS if k not in ("security_protocol", "sasl_mechanism")
        }
        if rest.get("ssl_check_hostname") is None:
            rest["ssl_check_hostname"] = True
        return cls(
            security_protocol=protocol, sasl_mechanism=mechanism, refused_literals=given, **rest
        )

    # -- what it is ---------------------------------------------------------------------------
    @property
    def plaintext(self) -> bool:
        """No option set: a plain connection, as before security options existed."""
        return self == KafkaSecurity()

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def password_source(self) -> str:
        """Where the SASL password comes from, for messages: ``$VAR`` or ``the file PATH``."""
        if self.sasl_password_env:
            return f"${self.sasl_password_env}"
        if self.sasl_password_file:
            return f"the file {self.sasl_password_file}"
        return "(no password option)"

    # -- checks -------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """One line per bad option, naming it and the fix (empty when all is well)."""
        out: list[str] = []
        for name in self.refused_literals:
            base = "ssl_key_password" if name.startswith("ssl") else "sasl_password"
            out.append(
                f"{name}= is refused: a password never sits in a flow file; use "
                f"{base}_env='VAR' (an environment variable) or {base}_file='path' (a file "
                "only the node's user can read)"
            )
        p = self.security_protocol
        if p not in PROTOCOLS:
            out.append(f"security_protocol={p!r}: use one of {', '.join(PROTOCOLS)}")
            return out
        if not isinstance(self.ssl_check_hostname, bool):
            out.append(f"ssl_check_hostname={self.ssl_check_hostname!r}: give True or False")
        ssl_given = [
            n
            for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_env",
                      "ssl_key_password_file")
            if getattr(self, n) is not None
        ]  # fmt: skip
        if ssl_given and not self.tls:
            out.append(
                f"{ssl_given[0]}= needs a TLS connection: set security_protocol='SSL' (or "
                "'SASL_SSL' with a user name and password)"
            )
        for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            out.extend(_file_problem(n, getattr(self, n)))
        if self.ssl_certfile and not self.ssl_keyfile:
            out.append(
                "ssl_certfile= without ssl_keyfile=: a client certificate (mTLS) needs its "
                "private key; give ssl_keyfile='client.key'"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            out.append(
                "ssl_keyfile= without ssl_certfile=: give the client certificate too "
                "(ssl_certfile='client.pem')"
            )
        out.extend(
            _secret_problems(
                "ssl_key_password", self.ssl_key_password_env, self.ssl_key_password_file
            )
        )
        sasl_given = [
            n
            for n in ("sasl_mechanism", "sasl_username", "sasl_password_env", "sasl_password_file")
            if getattr(self, n) is not None
        ]
        if not self.sasl:
            if sasl_given:
                out.append(
                    f"{sasl_given[0]}= needs SASL: set security_protocol='SASL_SSL' (or "
                    "'SASL_PLAINTEXT' on a trusted network)"
                )
            return out
        if self.sasl_mechanism is None:
            out.append(
                f"security_protocol={p!r} needs sasl_mechanism=: one of {', '.join(MECHANISMS)}"
            )
        elif self.sasl_mechanism not in MECHANISMS:
            out.append(
                f"sasl_mechanism={self.sasl_mechanism!r}: use one of {', '.join(MECHANISMS)}"
            )
        if not self.sasl_username or not isinstance(self.sasl_username, str):
            out.append(f"security_protocol={p!r} needs sasl_username='the user name'")
        if self.sasl_password_env is None and self.sasl_password_file is None:
            out.append(
                f"security_protocol={p!r} needs a password: sasl_password_env='VAR' (an "
                "environment variable) or sasl_password_file='path'"
            )
        out.extend(
            _secret_problems("sasl_password", self.sasl_password_env, self.sasl_password_file)
        )
        return out

    # -- the kafka-python configuration -------------------------------------------------------
    def client_config(self) -> dict[str, Any]:
        """The options of KafkaProducer / KafkaConsumer / KafkaAdminClient (empty for a plain
        connection), with the secrets read now. Raises :class:`SecretError` when one cannot be
        read. The result holds secrets: never log it."""
        if self.plaintext:
            return {}
        cfg: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            cfg["ssl_check_hostname"] = self.ssl_check_hostname
            for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, n):
                    cfg[n] = getattr(self, n)
            key_password = _read_secret(
                "ssl_key_password", self.ssl_key_password_env, self.ssl_key_password_file
            )
            if key_password is not None:
                cfg["ssl_password"] = key_password
        if self.sasl:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = _read_secret(
                "sasl_password", self.sasl_password_env, self.sasl_password_file
            )
        return cfg

    def describe(self) -> dict[str, Any]:
        """The options as given, for ``inspect`` and ``plan.json``: paths and the *names* of
        the secrets' variables or files, never a secret."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            out["ssl_check_hostname"] = self.ssl_check_hostname
        for n in OPTIONS:
            v = getattr(self, n)
            if n not in ("security_protocol", "ssl_check_hostname") and v is not None:
                out[n] = v
        return out

    # -- refusals -----------------------------------------------------------------------------
    def explain(self, who: str, endpoint: str, error: str) -> str:
        """One line saying why ``who`` (e.g. ``kafka sink 'alerts'``) was refused by the
        broker at ``endpoint`` and what to check; ``error`` is kafka-python's error text."""
        kind = refusal(error)
        if kind == AUTH:
            return (
                f"{who}: SASL authentication failed for user {self.sasl_username!r} on {endpoint} "
                f"(wrong username or password?); check sasl_username and the secret in "
                f"{self.password_source()}"
            )
        if kind == MECHANISM:
            return (
                f"{who}: the broker at {endpoint} does not accept sasl_mechanism="
                f"{self.sasl_mechanism!r} on this listener; use one it enables"
            )
        if kind == HOSTNAME:
            return (
                f"{who}: certificate verify failed: the broker's certificate at {endpoint} is not "
                "issued for that host name; connect with a name it lists, or set "
                "ssl_check_hostname=False only on a network you trust"
            )
        if kind == UNTRUSTED:
            ca = f"ssl_cafile={self.ssl_cafile}" if self.ssl_cafile else "the system's CAs"
            return (
                f"{who}: certificate verify failed: the broker's certificate at {endpoint} is "
                f"not signed by {ca}; give the CA that signed it as ssl_cafile"
            )
        if kind == CLIENT_CERT:
            if self.ssl_certfile:
                return (
                    f"{who}: the broker at {endpoint} rejected the client certificate "
                    f"ssl_certfile={self.ssl_certfile} (not signed by a CA it trusts, or expired)"
                )
            return (
                f"{who}: the broker at {endpoint} requires a client certificate (mTLS): set "
                "ssl_certfile and ssl_keyfile"
            )
        if kind == NOT_TLS:
            return (
                f"{who}: the listener at {endpoint} does not speak TLS; check "
                f"security_protocol={self.security_protocol!r} and the port"
            )
        return f"{who}: Kafka at {endpoint} refused the connection: {error}"


def refusal(error: str) -> str | None:
    """The kind of security refusal kafka-python's error text reports, or None (then it is
    not a security matter: an unreachable broker, a timeout)."""
    text = error or ""
    low = text.lower()
    if "saslauthenticationfailed" in low or "authentication failed" in low:
        return AUTH
    if "unsupportedsaslmechanism" in low or ("does not support" in low and "sasl" in low):
        return MECHANISM
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "mismatch" in low or "hostname" in low or "not valid for" in low:
            return HOSTNAME
        return UNTRUSTED
    if (
        "alert_bad_certificate" in low
        or "alert bad certificate" in low
        or "certificate_required" in low
        or "certificate required" in low
        or "alert_unknown_ca" in low
    ):
        return CLIENT_CERT
    if "wrong_version_number" in low or "wrong version number" in low:
        return NOT_TLS
    return None


def _file_problem(name: str, path: str | None) -> list[str]:
    if path is None:
        return []
    if not isinstance(path, str) or not path:
        return [f"{name}={path!r}: give the path of a PEM file"]
    p = Path(path)
    if not p.is_file():
        return [f"{name}={path!r}: no such file; give the path of the PEM file"]
    if not os.access(p, os.R_OK):
        return [f"{name}={path!r}: cannot be read by this user; fix its permissions"]
    return []


def _secret_problems(base: str, env: str | None, file: str | None) -> list[str]:
    if env is not None and file is not None:
        return [f"{base}_env= and {base}_file= are both given: give one"]
    if env is not None:
        if not isinstance(env, str) or not env:
            return [f"{base}_env={env!r}: give the name of an environment variable"]
        if not os.environ.get(env):
            return [
                f"{base}_env={env!r}: that environment variable is not set (or empty); "
                f"export it on the node, or use {base}_file='path'"
            ]
    if file is not None:
        if not isinstance(file, str) or not file:
            return [f"{base}_file={file!r}: give the path of a file holding the password"]
        try:
            if not Path(file).read_text().strip("\r\n"):
                return [f"{base}_file={file!r}: the file is empty"]
        except OSError as exc:
            return [
                f"{base}_file={file!r}: cannot be read ({exc.strerror}); fix the path or permissions"
            ]
    return []


def _read_secret(base: str, env: str | None, file: str | None) -> str | None:
    if env:
        value = os.environ.get(env)
        if not value:
            raise SecretError(f"{base}_env={env!r}: that environment variable is not set")
        return value
    if file:
        try:
            return Path(file).read_text().strip("\r\n")
        except OSError as exc:
            raise SecretError(f"{base}_file={file!r}: cannot be read ({exc.strerror})") from None
    return None


def raw_option_problems(options: dict[str, Any], where: str) -> list[str]:
    """Security settings given as raw kafka-python options (e.g. in ``producer_options``):
    refused, naming the first-class option to use instead."""
    return [
        f"{where}[{k!r}]: give security settings as options of the sink ({RAW_OPTIONS[k]}=), "
        "so topic creation and the forwarders use them too"
        + ("; a password never sits in a flow file" if "password" in k else "")
        for k in options
        if k in RAW_OPTIONS
    ]


__all__ = ["KafkaSecurity", "SecretError", "raw_option_problems", "refusal"]
