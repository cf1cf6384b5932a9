"""Exit codes of every referral-bridge command: part of the interface (systemd acts on them)."""

RET_OK = 0
#: Something failed that is not one of the cases below (a bug: see the log).
RET_FAILURE = 1
RET_USAGE = 2
#: The configuration, policy or a key file is invalid or unsafe, the broker refused the login (in
#: check-config), or the ledger schema is newer than this bridge: fix it and start again
#: (systemd does not retry: RestartPreventExitStatus=3). `check-config` returns it when anything
#: needs fixing. `run` on PostgreSQL also returns it when the schema is missing or not this
#: version's (run `referral-bridge migrate` as the owner role) and when its role could alter the
#: audit trail (superuser, owner, or UPDATE/DELETE/TRUNCATE/TRIGGER on rb_audit).
RET_CONFIG = 3
#: The broker or the ledger cannot be reached: systemd restarts the bridge after a pause.
#: `check-config` returns it when nothing needs changing but a service does not answer.
RET_CONNECT = 4
#: A sealed referral could not be opened: bad signature, unknown key or tampering.
RET_VERIFY = 5
#: Schema files differ from the models (`schemas check`).
RET_DRIFT = 6
#: `audit verify`: the audit trail's hash chain is broken (a record edited, deleted, inserted or
#: reordered), or a record's time is far from the server's (backdated); the first is named.
RET_TAMPERED = 7
