"""Egress policy for every URL a user supplies (alert webhooks, Slack URLs, job webhooks).

    from orchestrator.egress import EgressPolicy, egress_client, post_pinned

    policy = EgressPolicy.from_settings(settings)        # ORCH_EGRESS_ALLOW
    policy.check(url, field="channels[0].url")          # at save: EgressRefused -> 422
    post_pinned(client, policy, url, body, headers)      # at send: checked again, pinned
"""

from orchestrator.egress.addresses import embedded_ipv4, ip_literal, refusal
from orchestrator.egress.http import egress_client, post_pinned
from orchestrator.egress.policy import (
    ALLOW_SETTING,
    Checked,
    EgressPolicy,
    EgressRefused,
    Resolver,
    Target,
    parse_allow,
    parse_url,
    system_resolver,
)

__all__ = [
    "ALLOW_SETTING",
    "Checked",
    "EgressPolicy",
    "EgressRefused",
    "Resolver",
    "Target",
    "egress_client",
    "embedded_ipv4",
    "ip_literal",
    "parse_allow",
    "parse_url",
    "post_pinned",
    "refusal",
    "system_resolver",
]
