"""What must hold before the daemon starts, checked without starting it: every config key (all
problems in one pass), the plugins (resolved, their [plugins.X] tables fit their options, no
stray table), the TLS files (loaded, a message naming the file), a configured key file. `galaxynode
run` and `galaxynode config check` both call `check`, so that what one accepts the other does."""
from __future__ import annotations

import os
from typing import Any, Mapping

from galaxynode.config import Config, ConfigError, collect_config


def preflight(config: Config) -> list[ConfigError]:
    """The problems a start with `config` would run into past its keys (plugins, TLS, key file)."""
    from galaxynode.plugins import check_config as check_plugins
    return [*_tls(config), *_key_file(config), *_file_descriptors(config), *check_plugins(config)]


def check(path: str | os.PathLike | None, *, env: Mapping[str, str] = os.environ,
          overrides: Mapping[str, Any] = {}) -> tuple[Config | None, list[ConfigError]]:
    """The config (defaults in place of bad values; None if the file cannot be read) and every
    problem with it, at most one per key, in the order found."""
    config, errors = collect_config(path, env=env, overrides=overrides, check_files=True)
    if config is None:
        return None, errors
    seen = {e.key for e in errors}
    for e in preflight(config):
        if e.key not in seen:
            seen.add(e.key)
            errors.append(e)
    return config, errors


# Descriptors a process needs beside its sessions: listeners, the registry store and PostgreSQL
# connections, log files, metrics clients (16) and event streams (8), the main-net announcer.
FD_RESERVE = 256


def fds_needed(config: Config) -> int:
    """File descriptors one daemon process (one worker) may hold at its limits."""
    s = config.server
    return s.max_connections + s.max_pending + config.peers.max_outbound + FD_RESERVE


def _file_descriptors(config: Config) -> list[ConfigError]:
    """A pool past its descriptor limit cannot accept, and the sessions it holds suffer (measured:
    20,000 nodes at a hard limit of 20,000 lost leases): refuse limits the process cannot honour."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = fds_needed(config)
    if hard == resource.RLIM_INFINITY or need <= hard:
        return []
    s = config.server
    return [ConfigError("server.max_connections", f"{s.max_connections} sessions + max_pending {s.max_pending} + "
                        f"peers.max_outbound {config.peers.max_outbound} + {FD_RESERVE} reserved need {need} file "
                        f"descriptors, but this process may open at most {hard} (RLIMIT_NOFILE): raise "
                        f"LimitNOFILE= in the unit (ulimit -Hn) or lower server.max_connections")]


def raise_fd_limit(config: Config) -> None:
    """Before serving: lift the soft descriptor limit to what the limits need (the check above
    guarantees the hard limit allows it); many systems start processes at a soft limit of 1,024."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = fds_needed(config)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


def _tls(config: Config) -> list[ConfigError]:
    from galaxynode.net.tls import TLSError, client_context, server_context
    out = []
    s = config.server
    if s.tls_cert:
        try:
            server_context(s.tls_cert, s.tls_key)
        except TLSError as e:
            key = "server.tls_key" if s.tls_key and e.path == s.tls_key != s.tls_cert else "server.tls_cert"
            out.append(ConfigError(key, str(e)))
    if config.tls.ca_file:
        try:
            client_context(config.tls.ca_file)
        except TLSError as e:
            out.append(ConfigError("tls.ca_file", str(e)))
    return out


def _key_file(config: Config) -> list[ConfigError]:
    """A configured key file must load (the default one is created on first start)."""
    from galaxynode.identity import KeyFileError, load_key
    if config.node.key_file is None:
        return []
    try:
        load_key(config.node.key_file)
    except KeyFileError as e:
        return [ConfigError("node.key_file", str(e))]
    return []
