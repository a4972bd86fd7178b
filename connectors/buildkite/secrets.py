"""Pipeline secrets in the JuliaGPU format: ``slurm-sync buildkite encrypt`` and ``decrypt-env``.

    >>> snippet = encrypt("CODECOV_TOKEN", "t0ken", public_pem)             # doctest: +SKIP
    >>> snippet                                                           # doctest: +SKIP
    'SECRET_CODECOV_TOKEN: "Vq3f...;U2FsdGVkX1..."'
    >>> decrypt(snippet, private_pem)                                     # doctest: +SKIP
    DecryptedSecret(name='CODECOV_TOKEN', repository=None)
    >>> decrypt_env(os.environ, private_pem)                              # doctest: +SKIP
    (["export CODECOV_TOKEN=t0ken"], [])

The snippet goes under ``env:`` in a pipeline; the agent's environment hook runs
``slurm-sync buildkite decrypt-env`` and evals the ``export`` lines it prints.

Format (byte-compatible with JuliaGPU/buildkite ``tools/encrypt`` and ``image/hooks/environment``):

- keyfile: 128 random bytes in base64, 64 characters a line and a final newline, exactly as
  ``openssl rand -base64 128`` prints it (175 bytes).
- part 1: the whole keyfile encrypted with the RSA public key, PKCS#1 v1.5 padding (the default
  of ``openssl rsautl``, not OAEP), in base64 on one line. The key must have at least 2048 bits.
- part 2: ``'Salted__' + salt (8 bytes) + AES-256-CBC(value + "\\n")`` in base64 on one line, as
  ``echo "$value" | openssl enc -aes-256-cbc -salt -pbkdf2 -iter 100000 -pass file:keyfile``
  makes it: ``-pass file:`` reads only the FIRST LINE of the keyfile (64 base64 characters), and
  key + IV = PBKDF2-HMAC-SHA256(first line, salt, 100000 iterations) cut into 32 + 16 bytes;
  PKCS#7 padding. :func:`decrypt` wants that first line to have at least 32 base64
  characters (``MIN_PASSPHRASE``), else the key part counts as not decrypted.
- snippet: ``SECRET_<NAME>: "<part 1>;<part 2>"``.

Decryption reverses this; the trailing newline that ``echo`` added is removed (exactly one).

Repository binding (our extension; JuliaGPU's hook still decrypts a bound secret):

- A bound snippet has a third part, ``SECRET_<NAME>: "<part 1>;<part 2>;repo=<repository>"``,
  with the repository in normalized form (:func:`normalize_repository`: ``github.com/org/repo``).
  JuliaGPU's hook reads fields 1 and 2 with ``cut -d ';'`` and ignores the third.
- The keyfile of a bound secret is the first line of a fresh ``openssl rand -base64 128`` text
  (the only line ``-pass file:`` reads: 48 random bytes) followed by a line
  ``slurm-sync-repository-sha256=<hex SHA-256 of the normalized repository>``. That line cannot
  be confused with base64 (``-`` and ``=`` inside) and is invisible to ``openssl enc``.
- :func:`decrypt` refuses a secret whose keyfile carries a binding line but whose snippet has no
  third part (stripped), or whose third part hashes to another value (edited), and one with a
  third part but no binding line in its keyfile (added). :func:`decrypt_env` exports a bound
  secret only when ``BUILDKITE_REPO`` names the bound repository.

Why it is safe: the binding travels inside the RSA ciphertext together with the AES passphrase.
Part 1 can only be rebuilt by someone who knows the passphrase, that is, who already holds the
value; any part 1 made up without it (a new keyfile without the binding line) opens part 2 to
nothing but noise. PKCS#1 v1.5 ciphertexts cannot be edited in place: changing any bit changes
the whole plaintext. :func:`decrypt_env` checks the binding and the build's repository before it
decrypts part 2, so a build of another repository never touches the value (no CBC padding oracle
there), fork builds touch no key at all, and every failure to open part 1 gives the same message
(no padding oracle beyond one bit per build). Unbound secrets keep JuliaGPU's weakness: any
trusted build on the agent can decrypt one copied from another pipeline
(``require_repository=True`` refuses them).

Differences from JuliaGPU's shell tools (only in corner cases):

- ``tools/encrypt`` runs ``echo $val`` unquoted: runs of blanks collapse, ``*`` expands, a value
  ``-n`` vanishes. :func:`encrypt` encrypts the value as given, plus the one ``"\\n"``.
- Their hook keeps ``$(...)``'s output, which drops ALL trailing newlines; ours drops the one
  ``echo`` added, so a value that itself ends in newlines keeps them here only.
- Their hook takes every variable whose name contains ``SECRET_`` and cuts 7 characters; ours
  takes names that start with ``SECRET_``.

Names: ``NAME`` must match ``^[A-Z_][A-Z0-9_]*$``; a lowercase name is refused with the
uppercase one suggested, never changed silently (a job reads the name it was given).
:func:`decrypt_env` exports any valid shell name (``[A-Za-z_][A-Za-z0-9_]*``), so snippets made
by JuliaGPU's tool with lowercase names still work. Values must not be empty and must not contain
NUL (a shell variable cannot hold one).

No message, warning or exception of this module contains a value, a passphrase or key material:
they name the variable or the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import shlex
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from getpass import getpass as _tty_getpass
from typing import Callable, TextIO, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from slurm_sync.errors import SyncError

__all__ = [
    "BuildkiteSecretError",
    "DecryptedSecret",
    "cli_decrypt_env",
    "cli_encrypt",
    "decrypt",
    "decrypt_env",
    "encrypt",
    "normalize_repository",
    "read_private_key",
]

PREFIX = "SECRET_"
PBKDF2_ITERATIONS = 100_000
KEYFILE_RANDOM_BYTES = 128
MIN_RSA_BITS = 2048
SALT_MAGIC = b"Salted__"
BINDING_KEY = "slurm-sync-repository-sha256="
REPO_PART = "repo="

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

NAME_PATTERN = "^[A-Z_][A-Z0-9_]*$"
_NAME = re.compile(NAME_PATTERN)
_SHELL_NAME = re.compile("^[A-Za-z_][A-Za-z0-9_]*$")
_BASE64_LINE = re.compile("^[A-Za-z0-9+/]+={0,2}$")
_HEX64 = re.compile("^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_REPO_CHARS = re.compile(r"^[a-z0-9._~%+/-]+$")
_SNIPPET = re.compile(r'^\s*(?:SECRET_([A-Za-z0-9_]*)\s*:\s*)?"?([^"]*?)"?\s*$')

_NOT_OPENED = "the key part cannot be decrypted with this private key"
#: a key file's first line (the AES passphrase) is 64 base64 characters as ``openssl rand
#: -base64 N`` prints it for any N >= 48. Shorter is refused: under OpenSSL's implicit rejection a
#: wrong private key "decrypts" part 1 to a few pseudo-random bytes, ASCII for about 1 key in
#: 100, and a short base64 line among them would open part 2 to noise (1 in 256 passes CBC's
#: padding) instead of being refused.
MIN_PASSPHRASE = 32
_NOT_DECRYPTED = "the value part cannot be decrypted with the key part"

PrivateKey = Union[bytes, rsa.RSAPrivateKey]


class BuildkiteSecretError(SyncError):
    """A secret cannot be made or opened. The message names what is wrong (a variable, a file,
    a part of the snippet), never a value or key material."""


@dataclass(frozen=True)
class DecryptedSecret:
    """A decrypted secret: ``name`` (without ``SECRET_``; None when only the quoted value was
    given), ``value``, and the normalized ``repository`` it is bound to (None: unbound). The
    repr leaves the value out."""

    name: str | None
    value: str = field(repr=False)
    repository: str | None


@dataclass(frozen=True)
class _Opened:
    """Part 1 decrypted: the AES passphrase and the verified binding, before part 2 is read."""

    passphrase: bytes
    repository: str | None
    encrypted_value: str


# -- repositories ---------------------------------------------------------------------------


def normalize_repository(url: str) -> str:
    """`normalize_repository("git@github.com:Org/Repo.git")` is ``"github.com/org/repo"``, as is
    ``https://github.com/org/repo/``, ``ssh://git@github.com:22/org/repo`` and
    ``git://github.com/org/repo.git``: host and path, user, password and port dropped, a final
    ``/`` and ``.git`` stripped, lowercased (GitHub, GitLab and Bitbucket ignore case). ``""``
    when nothing is left."""
    text = url.strip()
    match = _SCHEME.match(text)
    if match:
        scheme, rest = match.groups()
        if scheme.lower() == "file":
            host, path = "", rest
        else:
            authority, _, path = rest.partition("/")
            host = authority.rpartition("@")[2].split(":")[0]
    else:
        head, colon, tail = text.partition(":")
        if colon and "/" not in head:  # scp-like: [user@]host:path
            host, path = head.rpartition("@")[2], tail
        else:  # a local path
            host, path = "", text
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[: -len(".git")].rstrip("/")
    joined = f"{host}/{path}" if host and path else host or path
    return joined.lower()


def _repository_digest(repository: str) -> str:
    return hashlib.sha256(repository.encode("utf-8")).hexdigest()


def _binding_repository(repository: str) -> str:
    normalized = normalize_repository(repository)
    if not normalized or not _REPO_CHARS.match(normalized):
        raise BuildkiteSecretError(
            f"repository {repository!r} is not a repository URL slurm-sync can bind a secret "
            "to (e.g. https://github.com/org/repo or git@github.com:org/repo.git)"
        )
    return normalized


# -- keys -------------------------------------------------------------------------------------


def _load_public_key(pem: bytes, what: str) -> rsa.RSAPublicKey:
    if b"PRIVATE KEY" in pem:
        raise BuildkiteSecretError(
            f"{what} is a private key: give the public key "
            "(openssl rsa -in private.key -pubout -out public.key)"
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BuildkiteSecretError(f"{what} is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise BuildkiteSecretError(f"{what} is not an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise BuildkiteSecretError(
            f"{what} is an RSA key of {key.key_size} bits; the format needs {MIN_RSA_BITS} or more"
        )
    return key


def _load_private_key(pem: PrivateKey, what: str = "the private key") -> rsa.RSAPrivateKey:
    if isinstance(pem, rsa.RSAPrivateKey):
        return pem
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise BuildkiteSecretError(
            f"{what} is protected by a passphrase, which the agent's hook cannot give"
        ) from None
    except (ValueError, UnsupportedAlgorithm):  # never chain: the error may quote the key
        raise BuildkiteSecretError(f"{what} is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BuildkiteSecretError(f"{what} is not an RSA key")
    return key


def read_private_key(path: str) -> bytes:
    """`read_private_key("/etc/slurm-sync/buildkite.key")` is the PEM text of the file, refused
    (a BuildkiteSecretError naming the file) when it is missing, not a regular file, or open to
    group or others (``mode & 0o077``)."""
    what = f"private key file {path}"
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BuildkiteSecretError(f"{what} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise BuildkiteSecretError(
                    f"{what} has mode {mode:04o}, open to group or others: run chmod 600 {path}"
                )
            return handle.read(1024 * 1024)
    except FileNotFoundError:
        raise BuildkiteSecretError(f"{what} does not exist") from None
    except PermissionError:
        raise BuildkiteSecretError(f"{what} is not readable by uid {os.geteuid()}") from None
    except IsADirectoryError:
        raise BuildkiteSecretError(f"{what} is not a regular file") from None
    except OSError as exc:
        raise BuildkiteSecretError(f"{what} cannot be read: {exc.strerror}") from None


# -- AES part, as openssl enc -aes-256-cbc -salt -pbkdf2 -iter 100000 --------------------


def _key_iv(passphrase: bytes, salt: bytes) -> tuple[bytes, bytes]:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=48, salt=salt, iterations=PBKDF2_ITERATIONS)
    material = kdf.derive(passphrase)
    return material[:32], material[32:]


def _aes_encrypt(plaintext: bytes, passphrase: bytes, salt: bytes) -> bytes:
    key, iv = _key_iv(passphrase, salt)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return SALT_MAGIC + salt + encryptor.update(padded) + encryptor.finalize()


def _aes_decrypt(blob: bytes, passphrase: bytes) -> bytes:
    body = blob[len(SALT_MAGIC) + 8 :]
    if not blob.startswith(SALT_MAGIC) or not body or len(body) % 16:
        raise BuildkiteSecretError(f"{_NOT_DECRYPTED}: it is not 'Salted__' + salt + AES blocks")
    key, iv = _key_iv(passphrase, blob[len(SALT_MAGIC) : len(SALT_MAGIC) + 8])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise BuildkiteSecretError(_NOT_DECRYPTED) from None


# -- encrypt ----------------------------------------------------------------------------------


def _keyfile_text(random_bytes: bytes) -> str:
    """The text ``openssl rand -base64 N`` prints: base64 in lines of 64, each ending in \\n."""
    encoded = base64.b64encode(random_bytes).decode("ascii")
    return "".join(encoded[i : i + 64] + "\n" for i in range(0, len(encoded), 64))


def _random(rand: Callable[[int], bytes], count: int) -> bytes:
    data = rand(count)
    if len(data) != count:
        raise BuildkiteSecretError(f"the random source gave {len(data)} bytes, not {count}")
    return data


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        hint = ""
        if _NAME.match(name.upper()):
            hint = f": use {name.upper()}"
        raise BuildkiteSecretError(
            f"variable name {name!r} must be uppercase letters, digits and _, not starting with "
            f"a digit{hint}"
        )


def _check_value(value: str) -> None:
    if not value:
        raise BuildkiteSecretError("the value is empty")
    if "\0" in value:
        raise BuildkiteSecretError("the value contains a NUL character, which no shell can hold")


def encrypt(
    name: str,
    value: str,
    public_key_pem: bytes,
    *,
    repository: str | None = None,
    rand: Callable[[int], bytes] = os.urandom,
) -> str:
    """`encrypt("CODECOV_TOKEN", token, pem)` is the pipeline line
    ``SECRET_CODECOV_TOKEN: "<part 1>;<part 2>"``; with ``repository=`` it has the third part
    ``repo=<normalized repository>`` and the binding line in its keyfile. ``rand(n)`` gives n
    random bytes (keyfile and salt). A BuildkiteSecretError for a bad name, an empty value, a
    value with NUL, or a public key that is not RSA of 2048 bits or more."""
    _check_name(name)
    _check_value(value)
    key = _load_public_key(public_key_pem, "the public key")
    keyfile = _keyfile_text(_random(rand, KEYFILE_RANDOM_BYTES))
    bound = None
    if repository is not None:
        bound = _binding_repository(repository)
        first_line = keyfile.split("\n", 1)[0]
        keyfile = f"{first_line}\n{BINDING_KEY}{_repository_digest(bound)}\n"
    passphrase = keyfile.split("\n", 1)[0].encode("ascii")
    wrapped = key.encrypt(keyfile.encode("ascii"), asym_padding.PKCS1v15())
    blob = _aes_encrypt((value + "\n").encode("utf-8"), passphrase, _random(rand, 8))
    parts = [base64.b64encode(wrapped).decode("ascii"), base64.b64encode(blob).decode("ascii")]
    if bound is not None:
        parts.append(REPO_PART + bound)
    return f'{PREFIX}{name}: "{";".join(parts)}"'


# -- decrypt ----------------------------------------------------------------------------------


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BuildkiteSecretError(f"{what} is not base64") from None


def _split(secret: str) -> tuple[str, str, str | None]:
    parts = secret.strip().split(";")
    if len(parts) not in (2, 3):
        raise BuildkiteSecretError(
            f"expected '<key part>;<value part>' or '...;repo=<repository>', got {len(parts)} "
            "part(s) separated by ;"
        )
    repo_part = None
    if len(parts) == 3:
        repo_part = parts[2].strip()
        if not repo_part.startswith(REPO_PART):
            raise BuildkiteSecretError("the third part is not 'repo=<repository>'")
        repo_part = repo_part[len(REPO_PART) :]
    return parts[0], parts[1], repo_part


def _open(secret: str, key: rsa.RSAPrivateKey) -> _Opened:
    """Decrypt part 1 and verify the repository binding; part 2 stays encrypted."""
    key_part, value_part, repo_part = _split(secret)
    wrapped = _b64(key_part, "the key part")
    try:
        keyfile_bytes = key.decrypt(wrapped, asym_padding.PKCS1v15())
        keyfile = keyfile_bytes.decode("ascii")
    except ValueError:  # bad padding or not ASCII: the same message for both
        raise BuildkiteSecretError(_NOT_OPENED) from None
    lines = keyfile.split("\n")
    if len(lines[0]) < MIN_PASSPHRASE or not _BASE64_LINE.match(lines[0]):
        raise BuildkiteSecretError(_NOT_OPENED)
    bindings = [line[len(BINDING_KEY) :] for line in lines[1:] if line.startswith(BINDING_KEY)]
    if len(bindings) > 1 or (bindings and not _HEX64.match(bindings[0])):
        raise BuildkiteSecretError(_NOT_OPENED)
    repository = None
    if bindings:
        if repo_part is None:
            raise BuildkiteSecretError(
                "the secret is bound to a repository but its ';repo=...' part is missing "
                "(stripped?)"
            )
        repository = normalize_repository(repo_part)
        if not hmac.compare_digest(_repository_digest(repository), bindings[0]):
            raise BuildkiteSecretError(
                f"the repository part {repo_part!r} is not the repository the secret was bound to "
                "(edited?)"
            )
    elif repo_part is not None:
        raise BuildkiteSecretError(
            f"the repository part {repo_part!r} was not bound when the secret was encrypted "
            "(added?)"
        )
    return _Opened(lines[0].encode("ascii"), repository, value_part)


def _reveal(opened: _Opened) -> str:
    plaintext = _aes_decrypt(_b64(opened.encrypted_value, "the value part"), opened.passphrase)
    try:
        value = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise BuildkiteSecretError("the decrypted value is not UTF-8 text") from None
    if value.endswith("\n"):
        value = value[:-1]
    if "\0" in value:
        raise BuildkiteSecretError("the decrypted value contains a NUL character")
    return value


def _parse_snippet(snippet: str) -> tuple[str | None, str]:
    match = _SNIPPET.match(snippet)
    if not match:
        raise BuildkiteSecretError(
            'expected SECRET_<NAME>: "<key part>;<value part>" or the quoted text alone'
        )
    name, secret = match.groups()
    return name, secret


def decrypt(snippet: str, private_key_pem: PrivateKey) -> DecryptedSecret:
    """`decrypt('SECRET_X: "..."', pem)` (or the quoted text alone) is the DecryptedSecret; a
    BuildkiteSecretError when it cannot be decrypted or its repository binding was stripped,
    edited or added. Whether the build may see it is :func:`decrypt_env`'s business."""
    name, secret = _parse_snippet(snippet)
    if name == "":
        raise BuildkiteSecretError("the variable name after SECRET_ is empty")
    opened = _open(secret, _load_private_key(private_key_pem))
    return DecryptedSecret(name=name, value=_reveal(opened), repository=opened.repository)


# -- decrypt-env ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EnvResult:
    exports: list[str]
    warnings: list[str]
    failed: bool  # some secret was refused or broken (not merely withheld from a fork build)


def _trusted_build(environ: Mapping[str, str]) -> tuple[bool, str]:
    pull_request = environ.get("BUILDKITE_PULL_REQUEST")
    if pull_request is None:
        return False, "BUILDKITE_PULL_REQUEST is not set"
    if pull_request == "false":
        return True, ""
    repo = normalize_repository(environ.get("BUILDKITE_REPO", ""))
    pr_repo = normalize_repository(environ.get("BUILDKITE_PULL_REQUEST_REPO", ""))
    if repo and pr_repo == repo:
        return True, ""
    return False, (
        f"pull request {pull_request} comes from {pr_repo or 'an unknown repository'}, "
        f"not from {repo or 'BUILDKITE_REPO (not set)'}"
    )


def _decrypt_env(
    environ: Mapping[str, str], private_key_pem: PrivateKey, *, require_repository: bool
) -> _EnvResult:
    variables = sorted(name for name in environ if name.startswith(PREFIX))
    if not variables:
        return _EnvResult([], [], False)
    trusted, why = _trusted_build(environ)
    if not trusted:
        listed = ", ".join(variables)
        count = f"{len(variables)} secret{'s' if len(variables) > 1 else ''}"
        return _EnvResult([], [f"not decrypting {count} ({listed}): {why}"], False)
    key = _load_private_key(private_key_pem)
    build_repo = normalize_repository(environ.get("BUILDKITE_REPO", ""))
    exports: list[str] = []
    warnings: list[str] = []
    for variable in variables:
        name = variable[len(PREFIX) :]
        try:
            if not _SHELL_NAME.match(name):
                raise BuildkiteSecretError(f"{name!r} is not a shell variable name")
            opened = _open(environ[variable], key)
            if opened.repository is None and require_repository:
                raise BuildkiteSecretError(
                    "the secret is bound to no repository and unbound secrets are refused"
                )
            if opened.repository is not None and opened.repository != build_repo:
                raise BuildkiteSecretError(
                    f"the secret is bound to {opened.repository}, this build is of "
                    f"{build_repo or 'an unknown repository (BUILDKITE_REPO not set)'}"
                )
            value = _reveal(opened)
        except BuildkiteSecretError as exc:
            warnings.append(f"{variable}: not exported: {exc}")
            continue
        exports.append(f"export {name}={shlex.quote(value)}")
    return _EnvResult(exports, warnings, bool(warnings))


def decrypt_env(
    environ: Mapping[str, str],
    private_key_pem: PrivateKey,
    *,
    require_repository: bool = False,
) -> tuple[list[str], list[str]]:
    """`decrypt_env(os.environ, pem)` is ``(exports, warnings)`` for the ``SECRET_*`` variables
    of ``environ``: ``export NAME='value'`` lines for a POSIX shell, and one warning per secret
    not exported (naming the variable, never the value). Nothing is decrypted unless
    ``BUILDKITE_PULL_REQUEST`` is ``"false"`` or ``BUILDKITE_PULL_REQUEST_REPO`` names the same
    repository as ``BUILDKITE_REPO`` (:func:`normalize_repository`); a bound secret is exported
    only when ``BUILDKITE_REPO`` is its repository; ``require_repository`` refuses unbound
    ones. A BuildkiteSecretError only when the private key is needed and cannot be loaded."""
    result = _decrypt_env(environ, private_key_pem, require_repository=require_repository)
    return result.exports, result.warnings


# -- command-line shells --------------------------------------------------------------------


def _prompt(prompt: str) -> str:
    """Like input(), but the prompt goes to stderr, so stdout holds only the snippet."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def cli_encrypt(
    public_key_path: str,
    *,
    name: str | None = None,
    value: str | None = None,
    repository: str | None = None,
    input: Callable[[str], str] = _prompt,
    getpass: Callable[[str], str] = _tty_getpass,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``slurm-sync buildkite encrypt PUBLIC_KEY [--name NAME] [--repository URL]``: asks for
    the name (unless given) and the value (with ``getpass``: never on argv, never echoed),
    prints the snippet to ``out``. 0, or 2 with the reason on ``err``."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        with open(public_key_path, "rb") as handle:
            pem = handle.read(1024 * 1024)
    except OSError as exc:
        err.write(f"error: public key file {public_key_path} cannot be read: {exc.strerror}\n")
        return EXIT_USAGE
    try:
        _load_public_key(pem, f"public key file {public_key_path}")
        if name is None:
            name = input("Variable name: ").strip()
        _check_name(name)
        if value is None:
            value = getpass("Secret value: ")
        snippet = encrypt(name, value, pem, repository=repository)
    except (EOFError, KeyboardInterrupt):
        err.write("error: no input; nothing encrypted\n")
        return EXIT_USAGE
    except BuildkiteSecretError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    err.write("Add this line under env: in the pipeline (pipeline.yml):\n")
    out.write(snippet + "\n")
    out.flush()
    return EXIT_OK


def cli_decrypt_env(
    private_key_path: str,
    environ: Mapping[str, str],
    out: TextIO,
    *,
    err: TextIO | None = None,
    require_repository: bool = False,
) -> int:
    """``slurm-sync buildkite decrypt-env PRIVATE_KEY``, for the agent's environment hook
    (``eval "$(slurm-sync buildkite decrypt-env /etc/slurm-sync/buildkite.key)"``): the export
    lines on ``out``, warnings on ``err``. 0 when every secret was exported or withheld from a
    fork build, 1 when some secret was refused (the others are still printed), 2 when the key
    file is missing, unreadable, open to group or others, or not an RSA private key."""
    err = sys.stderr if err is None else err
    try:
        pem = read_private_key(private_key_path)
        key = _load_private_key(pem, f"private key file {private_key_path}")
    except BuildkiteSecretError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    result = _decrypt_env(environ, key, require_repository=require_repository)
    for line in result.exports:
        out.write(line + "\n")
    out.flush()
    for warning in result.warnings:
        err.write(f"warning: {warning}\n")
    return EXIT_FAILED if result.failed else EXIT_OK
