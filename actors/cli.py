"""The ``pacsai`` command: up, status, check-config, models, ai, replay, audit, quarantine, review, tokens.

The IT operations (status, replay, quarantine, AI switches, models, audit) go through
``api.operations.Operations``, the service layer the REST API calls too, so both check the same
arguments and audit the same way. Demo weights and the demo run from the repository root: ``python -m training`` and
``python -m demo`` (they are not part of the installed product).

Other packages add sub-commands through the entry-point group ``pacsai.commands``: each entry
point is ``register(subparsers) -> None``, which adds its parser with ``set_defaults(func=...)``
(``func(args) -> int``). A plugin that fails to load is named in a warning and left out.

Logs go to rotated files under ``logging.dir`` (``<storage.var_dir>/logs``); the console shows
WARNING and up, INFO with ``--verbose``.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import importlib.metadata
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from actors._cli_audit import audit_keygen, audit_verify
from actors._cli_ehr import ehr_list, ehr_replay, register_ehr
from actors._cli_export import export_parser
from actors._cli_keys import keys_rotate, register_keys
from actors._cli_metrics import metrics_parser
from actors._cli_purge import preview, print_preview, refuse_without_dry_run, register_purge
from actors._cli_render import (
    EXAMPLES,
    entry_json,
    format_entry,
    format_flag,
    format_rollout,
    render_card,
    render_status,
    when,
)
from actors._cli_up import cmd_up
from actors.adapters.logs import LogSettings, export_for_workers, install
from api.operations import LIMIT_MAX, InvalidArgument, NotFound, Operations, RayModelControl
from core.codec import to_jsonable
from core.config import AppConfig, cell_storage
from core.errors import AccessDenied, ConfigError, PacsAIError
from core.quarantine import QuarantineState
from core.review import FlagKind, FlagState, Resolution, Reviewer, ReviewRole
from state.ledger import Ledger, open_ledger

__all__ = ["main"]

logger = logging.getLogger("pacsai")
DEFAULT_CONFIG = "configs/default.yaml"


def _console() -> Console:
    """stdout as rich sees it: colours and live displays on a terminal, plain text (120 wide) else."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def _config(args: argparse.Namespace) -> AppConfig:
    """Load ``--config``, and from then on log to files under its log dir."""
    from actors.config_file import load_config

    cfg = load_config(args.config)
    settings = LogSettings.from_config(cfg.logging, cfg.storage, verbose=getattr(args, "verbose", False))
    install(settings)
    if getattr(args, "func", None) is cmd_up:  # the actors Ray starts now inherit the driver's log settings
        export_for_workers(settings)
    return cfg


def _ledger(cfg: AppConfig) -> Ledger:
    return open_ledger(cfg.storage)


def _operations(args: argparse.Namespace) -> Operations:
    cfg = _config(args)
    return Operations(cfg, _ledger(cfg), RayModelControl(cfg))


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file; print every bad field."""
    from actors.config_file import load_config

    cfg = load_config(args.file)
    bridge = f"HL7 bridge {'on' if cfg.hl7 else 'off'}, EHR results {'on' if cfg.ehr else 'off'}"
    print(f"{args.file}: OK ({len(cfg.models)} model(s), {len(cfg.routing.rules)} routing rule(s), {bridge})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print jobs per state, per-stage health, queue depth and the oldest waiting job."""
    report = _operations(args).status()
    if args.json:
        print(json.dumps(to_jsonable(report), indent=2))
    else:
        _console().print(render_status(report, time.time()), soft_wrap=False)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List, show, release or discard quarantined instances (core.quarantine has the rules)."""
    ops = _operations(args)
    actor = f"user:{args.user}" if hasattr(args, "user") else ""
    if args.quarantine_command == "list":
        state = None if args.state == "all" else QuarantineState(args.state)
        entries = ops.quarantine_list(state, args.study, args.limit)
    elif args.quarantine_command == "show":
        entries = ops.quarantine_show(args.id)
    elif args.quarantine_command == "release":
        entries = ops.quarantine_release(args.id, actor, args.reason)
    else:
        entries = ops.quarantine_discard(args.id, actor, args.reason)
    if args.json:
        print(json.dumps([entry_json(e) for e in entries], indent=2, default=str))
    else:
        verbose = args.quarantine_command != "list"
        print("\n".join(format_entry(e, verbose) for e in entries) or "quarantine: nothing")
    return 0


def _flag_id(text: str) -> int:
    try:
        return int(text.upper().removeprefix("R"))
    except ValueError:
        raise ConfigError("arguments", [f"id: got {text!r}; expected R<n> or <n>"]) from None


def _reviewer(cfg: AppConfig, user: str) -> Reviewer:
    roles = cfg.review.reviewers.get(user)
    if not roles:
        raise AccessDenied(f"user:{user}", "resolve review flags (not in review.reviewers)")
    return Reviewer(f"user:{user}", frozenset(ReviewRole(r) for r in roles))


def cmd_review(args: argparse.Namespace) -> int:
    """List, show or resolve review flags (who may resolve what: ``core.review.RULES``)."""
    cfg = _config(args)
    reviews = _ledger(cfg).reviews
    if args.review_command == "list":
        state = None if args.state == "all" else FlagState(args.state)
        kind = FlagKind(args.kind) if args.kind else None
        flags = reviews.flags(state, args.study, kind, args.limit)
    elif args.review_command == "show":
        flags = [reviews.get(_flag_id(args.id))]
    else:
        flags = [
            reviews.resolve(
                _flag_id(args.id), _reviewer(cfg, args.user), Resolution(args.resolution), args.reason, time.time()
            )
        ]
    if args.json:
        print(json.dumps([f.to_json() for f in flags], indent=2, default=str))
    else:
        verbose = args.review_command != "list"
        print("\n".join(format_flag(f, verbose) for f in flags) or "review: nothing")
    return 0


def cmd_models_deploy(args: argparse.Namespace) -> int:
    """Deploy (or update) one family's Serve application on the running Ray; others keep running."""
    try:
        deployed = _operations(args).models_deploy(args.family, f"user:{getpass.getuser()}")
    except (NotFound, InvalidArgument) as exc:  # a family the config does not have: the config is what to fix
        raise ConfigError(args.config, [exc.reason]) from exc
    print(f"deployed {', '.join(deployed)}")
    return 0


def cmd_models_remove(args: argparse.Namespace) -> int:
    """Remove one family's Serve application; its jobs wait (visibly) until it is deployed again."""
    removed = _operations(args).models_remove(args.family, f"user:{getpass.getuser()}")
    print(f"removed {', '.join(removed)}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """Print the deployed model applications and their status."""
    for name, status in sorted(_operations(args).models_list().items()):
        print(f"{name:<32} {status}")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    """Print a family's model card: versions, live and halted, traffic, declared and observed."""
    card = _operations(args).models_show(args.family)
    if args.json:
        print(json.dumps(to_jsonable(card), indent=2))
    else:
        _console().print(render_card(card), soft_wrap=False)
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    """Make a configured version live (audited); the one live until now gets no studies."""
    state = _operations(args).models_promote(args.family, args.version, f"user:{args.user}", args.reason)
    print(format_rollout(state, "promoted"))
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    """Go back to a version (audited); the versions rolled back from are halted."""
    state = _operations(args).models_rollback(args.family, args.version, f"user:{args.user}", args.reason)
    print(format_rollout(state, "rolled back"))
    return 0


def cmd_ai(args: argparse.Namespace) -> int:
    """Switch AI on or off for a study or a modality (effective without restart)."""
    scope, key = ("study", args.study) if args.study else ("modality", args.modality)
    setting = _operations(args).set_ai_switch(scope, key, args.state == "on", args.reason or "", f"user:{args.user}")
    print(f"AI {args.state} for {scope} {setting.key}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Put a dead job back into the state it died in, with a fresh retry budget."""
    state = _operations(args).replay(args.job_id, f"user:{args.user}")
    print(f"job {args.job_id} replayed into {state}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify the signed audit chain (against the exported head), show events, or make a key."""
    if args.action == "keygen":
        return audit_keygen(args.out or "audit-signing-key.pem")
    if args.action == "verify":
        try:
            return audit_verify(_ledger(_config(args)), args.head)
        except ValueError as exc:
            raise ConfigError("arguments", [str(exc)]) from None
    ops = _operations(args)
    left, after = args.limit, 0
    while left > 0:  # page through: one listing returns at most LIMIT_MAX events
        page = ops.audit_events(args.study, min(left, LIMIT_MAX), after)
        for e in page:
            print(json.dumps(to_jsonable(e), default=str))
        if len(page) < min(left, LIMIT_MAX):
            break
        left, after = left - len(page), page[-1].seq
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """Issue, list or revoke API tokens (the ledger keeps only the hash of a token's secret)."""
    from api.auth import issue_token

    tokens = _ledger(_config(args)).tokens
    now = time.time()
    actor = f"user:{getattr(args, 'user', '')}"
    if args.tokens_command == "create":
        expires = None if args.expires_in_days is None else now + args.expires_in_days * 86400
        try:
            text, token = issue_token(tokens, args.name, args.scope, expires, actor, now)
        except ValueError as exc:
            raise ConfigError("arguments", [str(exc)]) from None
        scopes = ", ".join(sorted(token.scopes))
        print(f"token {token.token_id} for {token.name} ({scopes}; expires {when(token.expires_at)}):")
        print(text)
        print("store it now: only its hash is kept, it is not shown again", file=sys.stderr)
        return 0
    if args.tokens_command == "revoke":
        try:
            token = tokens.revoke(args.id, actor, now)
        except KeyError:
            raise NotFound(
                f"token id: got {args.id[:40]!r}; expected an id listed by `pacsai tokens list`", ""
            ) from None
        print(f"token {token.token_id} ({token.name}) revoked")
        return 0
    listed = tokens.list(include_revoked=args.all)
    for t in listed:
        print(
            f"{t.token_id}  {t.state(now):<7} {t.name:<24} {','.join(sorted(t.scopes)):<20} "
            f"expires {when(t.expires_at)}  by {t.created_by}"
        )
    if not listed:
        print("tokens: none")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Rotate the data keys that seal PHI at rest (``actors._cli_keys``)."""
    return keys_rotate(_config(args), args.key_id, args.drop_old)


def _tokens_parser(t: argparse.ArgumentParser) -> None:
    tsub = t.add_subparsers(dest="tokens_command", required=True)
    create = tsub.add_parser("create", help="issue a token (printed once)")
    create.add_argument("name", help="who or what holds it (audited as token:<name>)")
    create.add_argument(
        "--scope", action="append", required=True, choices=["ingest", "read", "operate", "admin"], help="repeatable"
    )
    create.add_argument("--expires-in-days", type=float, help="default: until revoked")
    ls = tsub.add_parser("list", help="issued tokens (never their secrets)")
    ls.add_argument("--all", action="store_true", help="revoked ones too")
    revoke = tsub.add_parser("revoke", help="revoke a token (other API replicas follow within their cache time)")
    revoke.add_argument("id", help="the token id (pab_<id>_...)")
    for sp in (create, revoke):
        sp.add_argument("--user", default=getpass.getuser(), help="who issues or revokes (audited)")
    for sp in (create, ls, revoke):
        sp.add_argument("--config", default=argparse.SUPPRESS, help="config YAML file")


"""One example per command (``--help`` shows it); plugins bring their own epilog."""


def _sub_parsers(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``p`` and every sub-command parser under it, depth first."""
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _sub_parsers(child)


def _finish(p: argparse.ArgumentParser) -> None:
    """Give every parser its example and ``-v`` (so ``pacsai status -v`` works too)."""
    for sp in _sub_parsers(p):
        example = EXAMPLES.get(sp.prog)
        if example and not sp.epilog:
            sp.epilog = f"Example:\n  {example}"
        if sp.epilog:
            sp.formatter_class = argparse.RawDescriptionHelpFormatter
        if sp is not p and "--verbose" not in sp._option_string_actions:
            flags = ["-v", "--verbose"] if "-v" not in sp._option_string_actions else ["--verbose"]
            sp.add_argument(*flags, action="store_true", default=argparse.SUPPRESS, help="log INFO to the console")


def _plugins(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Let each ``pacsai.commands`` entry point add its sub-command; a broken one is skipped."""
    for ep in importlib.metadata.entry_points(group="pacsai.commands"):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take pacsai down: name it, go on
            logger.warning("plugin %s (%s) not loaded: %s: %s", ep.name, ep.value, type(exc).__name__, exc)


def cmd_ehr(args: argparse.Namespace) -> int:
    """The EHR outbox: list reports, replay dead ones (``actors._cli_ehr``)."""
    cfg = _config(args)
    ledger = _ledger(cfg)  # first: it loads the data keys the EHR store's columns are sealed with
    if args.ehr_command == "list":
        return ehr_list(cfg, ledger, args.state, args.limit, args.json)
    return ehr_replay(cfg, ledger, args.items, args.all_dead, args.user, args.reason)


def cmd_purge(args: argparse.Namespace) -> int:
    """Show what retention would delete now (``--dry-run``; ``actors._cli_purge``)."""
    if not args.dry_run:
        return refuse_without_dry_run()
    cfg = _config(args)
    try:
        storage = cell_storage(cfg, args.cell)
    except ConfigError as exc:
        print(f"pacsai purge: --cell {args.cell}: {'; '.join(exc.problems)}", file=sys.stderr)
        return 2
    print_preview(preview(storage, open_ledger(storage)), args.json)
    return 0


def _parser(plugins: bool = True) -> argparse.ArgumentParser:
    """Every sub-command; without ``plugins``, only the built-in ones (the plugins' imports
    cost most of a second, which ``pacsai up`` would spend before starting Ray)."""
    p = argparse.ArgumentParser(prog="pacsai", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO to the console (files always get it)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        if name != "check-config":
            sp.add_argument("--config", default=DEFAULT_CONFIG, help="config YAML file")
        return sp

    up = add("up", cmd_up, "run the service in the foreground")
    up.add_argument("--no-deploy", action="store_true", help="use already deployed models")
    st = add("status", cmd_status, "jobs per state, stage health, queue depth")
    st.add_argument("--json", action="store_true")
    cc = add("check-config", cmd_check_config, "validate a config file")
    cc.add_argument("file")
    _models_parser(add("models", None, "model families: deploy, remove, list, show (card), promote, rollback"))
    ai = add("ai", cmd_ai, "switch AI on/off per study or modality")
    ai.add_argument("state", choices=["on", "off"])
    grp = ai.add_mutually_exclusive_group(required=True)
    grp.add_argument("--study", help="Study Instance UID")
    grp.add_argument("--modality", help="Modality, e.g. CR")
    ai.add_argument("--reason", default="")
    ai.add_argument("--user", default="operator")
    rp = add("replay", cmd_replay, "replay a dead job")
    rp.add_argument("job_id", type=int)
    rp.add_argument("--user", default="operator")
    au = add("audit", cmd_audit, "verify or show the audit trail")
    au.add_argument("action", choices=["verify", "show", "keygen"])
    au.add_argument("--study")
    au.add_argument("--limit", type=int, default=200)
    au.add_argument("--head", help="verify: the exported chain head to check against (default: the head file)")
    au.add_argument("--out", help="keygen: where to write the new private key (mode 0600)")
    _quarantine_parser(add("quarantine", cmd_quarantine, "quarantined instances: list, show, release, discard"))
    _review_parser(add("review", cmd_review, "review flags: list, show, resolve (who, why, audited)"))
    _tokens_parser(add("tokens", cmd_tokens, "API tokens: create, list, revoke"))
    register_keys(add("keys", cmd_keys, "data keys at rest: rotate (re-seals files and columns)"))
    register_ehr(add("ehr", cmd_ehr, "EHR outbox: list reports, replay dead ones (audited)"))
    register_purge(add("purge", cmd_purge, "retention: what the next purge would delete (--dry-run)"))
    export_parser(sub.add_parser("export", help="research export: de-identified copies (export deid)"))
    metrics_parser(sub.add_parser("metrics", help="success measures per model version and month (metrics export)"))
    if plugins:
        _plugins(sub)
    _finish(p)
    return p


def _review_parser(r: argparse.ArgumentParser) -> None:
    rsub = r.add_subparsers(dest="review_command", required=True)
    ls = rsub.add_parser("list", help="review flags (open by default)")
    ls.add_argument("--state", choices=["open", "resolved", "all"], default="open")
    ls.add_argument("--study", help="only this Study Instance UID")
    ls.add_argument("--kind", choices=[k.value for k in FlagKind])
    ls.add_argument("--limit", type=int, default=200)
    show = rsub.add_parser("show", help="one flag with its detail and resolution")
    show.add_argument("id", help="R<n> or <n>")
    res = rsub.add_parser("resolve", help="settle a flag (the roles in review.reviewers decide who may)")
    res.add_argument("id", help="R<n> or <n>")
    res.add_argument("--resolution", required=True, choices=[x.value for x in Resolution])
    res.add_argument("--reason", required=True, help="why (audited)")
    res.add_argument("--user", default=getpass.getuser(), help="who resolves (audited; see review.reviewers)")
    for sp in (ls, show, res):
        sp.add_argument("--config", default=argparse.SUPPRESS, help="config YAML file")
        sp.add_argument("--json", action="store_true")


def _models_parser(models: argparse.ArgumentParser) -> None:
    msub = models.add_subparsers(dest="models_command", required=True)
    for name, func, help_ in (
        ("deploy", cmd_models_deploy, "deploy one family on the running Ray"),
        ("remove", cmd_models_remove, "remove one family from the running Ray"),
    ):
        sp = msub.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        sp.add_argument("family")
        sp.add_argument("--config", default=DEFAULT_CONFIG)
    ls = msub.add_parser("list", help="deployed model applications")
    ls.set_defaults(func=cmd_models_list)
    ls.add_argument("--config", default=DEFAULT_CONFIG)
    show = msub.add_parser("show", help="a family's model card: versions, traffic, declared and observed")
    show.set_defaults(func=cmd_models_show)
    show.add_argument("family")
    show.add_argument("--config", default=DEFAULT_CONFIG)
    show.add_argument("--json", action="store_true")
    for name, func, help_ in (
        ("promote", cmd_models_promote, "make a configured version live (its application must be deployed)"),
        ("rollback", cmd_models_rollback, "go back to a version; the versions rolled back from are halted"),
    ):
        sp = msub.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        sp.add_argument("family")
        sp.add_argument("version", help="the family's own version or a key of its versions")
        sp.add_argument("--reason", default="", help="why (audited)")
        sp.add_argument("--user", default=getpass.getuser(), help="who (audited)")
        sp.add_argument("--config", default=DEFAULT_CONFIG)


def _quarantine_parser(q: argparse.ArgumentParser) -> None:
    qsub = q.add_subparsers(dest="quarantine_command", required=True)
    ls = qsub.add_parser("list", help="quarantine entries (held by default)")
    ls.add_argument("--state", choices=["held", "released", "discarded", "all"], default="held")
    ls.add_argument("--study", help="only this Study Instance UID")
    ls.add_argument("--limit", type=int, default=200)
    show = qsub.add_parser("show", help="one entry, or every entry of a series or study")
    show.add_argument("id", help="Q<n>, or a SOP Instance / Series / Study Instance UID")
    for name, action in (
        ("release", "process it despite its issues (re-opens its study)"),
        ("discard", "never process it; the file stays, marked"),
    ):
        sp = qsub.add_parser(name, help=action)
        sp.add_argument("id", help="Q<n>, or a SOP Instance / Series / Study Instance UID")
        sp.add_argument("--reason", required=True, help="why (audited)")
        sp.add_argument("--user", default=getpass.getuser(), help="who decides (audited)")
    for sp in (ls, show, *(qsub.choices[n] for n in ("release", "discard"))):
        # SUPPRESS: a value given before the sub-command (`quarantine --config x list`) stays.
        sp.add_argument("--config", default=argparse.SUPPRESS, help="config YAML file")
        sp.add_argument("--json", action="store_true")


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    """The sub-command names of ``parser``."""
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pacsai``; returns the exit status."""
    install(LogSettings(directory=None))  # the console only, until a command loads its config
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser(plugins=False)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in _commands(parser):  # a plugin's command, or help that lists them all
        parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        install(LogSettings(console_level="INFO", directory=None))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except PacsAIError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
