"""One vocabulary, shaped ``resource:action``.

The same names serve as Cedar actions (what a principal may do), token scopes
(the ``resource`` half) and audit event types (what happened). Keeping them in
one enum means a new endpoint cannot invent a permission the policy engine and
the audit log do not know.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    # platform administration
    TENANT_CREATE = "tenant:create"
    TENANT_LIST = "tenant:list"
    TENANT_READ = "tenant:read"
    # tenant administration
    PROJECT_CREATE = "project:create"
    PROJECT_LIST = "project:list"
    PROJECT_READ = "project:read"
    MEMBER_ADD = "member:add"
    MEMBER_LIST = "member:list"
    # identity
    TOKEN_ISSUE = "token:issue"  # noqa: S105 (an action name, not a secret)
    TOKEN_REVOKE = "token:revoke"  # noqa: S105
    AUTH_FAIL = "auth:fail"
    AUTH_LOGIN = "auth:login"  # a person signed in (OIDC, local account) and got a token
    ADMIN_INIT = "admin:init"
    # workload identity: an external token exchanged for a Qustody token (RFC 8693)
    TOKEN_EXCHANGE = "token:exchange"  # noqa: S105 (an action name, not a secret)
    TRUSTRULE_SET = "trustrule:set"
    TRUSTRULE_LIST = "trustrule:list"
    TRUSTRULE_DELETE = "trustrule:delete"
    # API keys, only where federation is impossible
    APIKEY_CREATE = "apikey:create"
    APIKEY_LIST = "apikey:list"
    APIKEY_REVOKE = "apikey:revoke"
    # local accounts (embedded mode, development only): password and TOTP
    ACCOUNT_SET = "account:set"
    # SCIM provisioning of a tenant's users and groups
    USER_CREATE = "user:create"
    USER_READ = "user:read"
    USER_LIST = "user:list"
    USER_UPDATE = "user:update"
    USER_DELETE = "user:delete"
    GROUP_CREATE = "group:create"
    GROUP_READ = "group:read"
    GROUP_LIST = "group:list"
    GROUP_UPDATE = "group:update"
    GROUP_DELETE = "group:delete"
    # a tenant's own Cedar policies (they can only narrow the platform's)
    POLICY_READ = "policy:read"
    POLICY_SET = "policy:set"
    # the audit log: searching a tenant's events, exporting, issuing a checkpoint
    AUDIT_READ = "audit:read"
    AUDIT_EXPORT = "audit:export"
    AUDIT_CHECKPOINT = "audit:checkpoint"
    # the gateway's configuration, recorded when a process starts with it
    CONFIG_LOAD = "config:load"
    # key management: rings of key-encryption keys, rotation, crypto-shredding
    KEY_LIST = "key:list"
    KEY_CREATE = "key:create"
    KEY_ROTATE = "key:rotate"
    KEY_RETIRE = "key:retire"
    KEY_DISABLE = "key:disable"
    KEY_ENABLE = "key:enable"
    KEY_DESTROY = "key:destroy"
    KEY_FAIL = "key:fail"  # a key its provider would not use (disabled at the source, gone)
    # the secrets vault: write-only credentials
    SECRET_SET = "secret:set"  # noqa: S105 (an action name, not a secret)
    SECRET_LIST = "secret:list"  # noqa: S105
    SECRET_DELETE = "secret:delete"  # noqa: S105
    SECRET_USE = "secret:use"  # noqa: S105
    # a tenant's public key for sealed exports
    EXPORTKEY_SET = "exportkey:set"
    EXPORTKEY_READ = "exportkey:read"
    # backends
    BACKEND_LIST = "backend:list"
    BACKEND_READ = "backend:read"
    # backend operations (platform operators): pause, resume, maintenance windows
    BACKEND_PAUSE = "backend:pause"
    BACKEND_RESUME = "backend:resume"
    BACKEND_MAINTAIN = "backend:maintain"
    # governance: quotas and usage
    USAGE_READ = "usage:read"
    QUOTA_SET = "quota:set"
    QUOTA_EXCEED = "quota:exceed"  # a submission refused by a quota (recorded by the system)
    # governance: rate limits
    RATELIMIT_EXCEED = "ratelimit:exceed"
    # governance: costs and spending limits
    COST_SET = "cost:set"  # a backend's price list (platform)
    BUDGET_SET = "budget:set"
    BUDGET_READ = "budget:read"
    BUDGET_ALERT = "budget:alert"
    # governance: alert delivery (signed webhooks)
    WEBHOOK_SET = "webhook:set"
    WEBHOOK_LIST = "webhook:list"
    WEBHOOK_DELETE = "webhook:delete"
    ALERT_SEND = "alert:send"
    # governance: approvals (N-of-M, never by the requester)
    APPROVAL_REQUEST = "approval:request"
    APPROVAL_READ = "approval:read"
    APPROVAL_LIST = "approval:list"
    APPROVAL_APPROVE = "approval:approve"
    APPROVAL_DENY = "approval:deny"
    APPROVAL_CANCEL = "approval:cancel"
    APPROVAL_EXPIRE = "approval:expire"
    APPROVAL_USE = "approval:use"
    # governance: just-in-time elevation and break-glass
    ELEVATION_REQUEST = "elevation:request"
    ELEVATION_LIST = "elevation:list"
    ELEVATION_ACTIVATE = "elevation:activate"
    ELEVATION_REVOKE = "elevation:revoke"
    ELEVATION_EXPIRE = "elevation:expire"
    BREAKGLASS_INVOKE = "breakglass:invoke"
    BREAKGLASS_REVIEW = "breakglass:review"
    BREAKGLASS_LIST = "breakglass:list"
    # governance: reservations and sessions
    RESERVATION_CREATE = "reservation:create"
    RESERVATION_LIST = "reservation:list"
    RESERVATION_CANCEL = "reservation:cancel"
    SESSION_CREATE = "session:create"
    SESSION_READ = "session:read"
    SESSION_CLOSE = "session:close"
    SESSION_EXPIRE = "session:expire"
    # the queue, as a tenant may see it (its own positions, a backend's load)
    QUEUE_READ = "queue:read"
    QUEUE_SHARE = "queue:share"  # a tenant's fair-queuing weight (operator)
    # jobs, as requested by callers
    JOB_SUBMIT = "job:submit"
    JOB_LIST = "job:list"
    JOB_READ = "job:read"
    JOB_CANCEL = "job:cancel"
    RESULT_READ = "result:read"
    # job lifecycle transitions, recorded by the system
    JOB_VALIDATE = "job:validate"
    JOB_REJECT = "job:reject"
    JOB_QUEUE = "job:queue"
    JOB_START = "job:start"
    JOB_COMPLETE = "job:complete"
    JOB_FAIL = "job:fail"
    JOB_HOLD = "job:hold"  # waiting for approval before it may queue
    JOB_ESTIMATE = "job:estimate"

    @property
    def resource(self) -> str:
        """The resource half, which is also the token scope that covers it."""
        return self.value.split(":", 1)[0]


#: Scopes a token may carry. ``*`` covers every action the roles allow.
SCOPES: frozenset[str] = frozenset({a.resource for a in Action} | {"*"})


class Role(StrEnum):
    PLATFORM_ADMIN = "platform-admin"
    TENANT_ADMIN = "tenant-admin"
    DEVELOPER = "developer"
    VIEWER = "viewer"


class DataClass(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"


class JobState(StrEnum):
    SUBMITTED = "submitted"
    VALIDATED = "validated"
    #: Held until enough approvers approve (then ``queued``), or denied or
    #: expired (then ``rejected``), or withdrawn (``cancelled``).
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED})

#: The lifecycle as a graph: a transition not listed here is a bug.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTED: frozenset({JobState.VALIDATED, JobState.REJECTED}),
    JobState.VALIDATED: frozenset(
        {JobState.QUEUED, JobState.AWAITING_APPROVAL, JobState.CANCELLED}
    ),
    JobState.AWAITING_APPROVAL: frozenset({JobState.QUEUED, JobState.REJECTED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.REJECTED: frozenset(),
}

#: The audit event type that records entering each state.
TRANSITION_EVENT: dict[JobState, Action] = {
    JobState.SUBMITTED: Action.JOB_SUBMIT,
    JobState.VALIDATED: Action.JOB_VALIDATE,
    JobState.AWAITING_APPROVAL: Action.JOB_HOLD,
    JobState.QUEUED: Action.JOB_QUEUE,
    JobState.RUNNING: Action.JOB_START,
    JobState.COMPLETED: Action.JOB_COMPLETE,
    JobState.FAILED: Action.JOB_FAIL,
    JobState.CANCELLED: Action.JOB_CANCEL,
    JobState.REJECTED: Action.JOB_REJECT,
}
