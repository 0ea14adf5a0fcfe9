"""Email over SMTP: multipart plain + HTML, the alert id in the subject, in
``X-Orchestrator-Alert-Id`` and in a stable ``Message-ID`` (receivers can de-duplicate)."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from html import escape

from orchestrator.notify.config import EmailConfig
from orchestrator.notify.errors import DeliveryError
from orchestrator.notify.message import AlertMessage
from orchestrator.notify.settings import SmtpSettings

log = logging.getLogger(__name__)

ALERT_ID_HEADER = "X-Orchestrator-Alert-Id"


def email_message(alert: AlertMessage, sender: str, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[orchestrator] {alert.title} [alert {alert.alert_id}]"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(usegmt=True)
    domain = sender.rsplit("@", 1)[-1] or "orchestrator"
    msg["Message-ID"] = f"<alert-{alert.alert_id}@{domain}>"
    msg[ALERT_ID_HEADER] = str(alert.alert_id)
    facts = alert.facts()
    plain = [alert.title, ""] + [f"{name}: {value}" for name, value in facts]
    msg.set_content("\n".join(plain) + "\n")
    rows = "".join(
        f"<tr><th align=\"left\">{escape(name)}</th><td>{escape(value)}</td></tr>"
        for name, value in facts
    )
    msg.add_alternative(
        f"<html><body><h2>{escape(alert.title)}</h2><table>{rows}</table></body></html>",
        subtype="html",
    )
    return msg


class EmailChannel:
    def __init__(self, config: EmailConfig, smtp: SmtpSettings) -> None:
        self._config = config
        self._smtp = smtp

    @property
    def label(self) -> str:
        return self._config.label

    def send(self, alert: AlertMessage) -> None:
        s = self._smtp
        if not s.smtp_host:
            raise DeliveryError("smtp_not_configured", detail="ORCH_SMTP_HOST is not set",
                                label=self.label, transient=False)
        msg = email_message(alert, s.smtp_from, list(self._config.to))
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as conn:
                if s.smtp_starttls:
                    conn.starttls(context=ssl.create_default_context())
                if s.smtp_user:
                    password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                    conn.login(s.smtp_user, password)
                refused = conn.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"smtp_{codes[0]}" if codes else "smtp_refused",
                detail="all recipients refused", label=self.label,
                transient=bool(codes) and all(400 <= c < 500 for c in codes),
            ) from None
        except smtplib.SMTPResponseException as exc:  # the server's text is never kept
            raise DeliveryError(f"smtp_{exc.smtp_code}", label=self.label,
                                transient=400 <= exc.smtp_code < 500) from None
        except (smtplib.SMTPException, OSError) as exc:  # connection, TLS, timeout
            raise DeliveryError("connect_failed", detail=type(exc).__name__, label=self.label,
                                transient=True) from None
        if refused:
            # Some recipients accepted it: delivered (a retry would duplicate it for them).
            log.warning(
                "alert %s: %s: %d of %d recipients refused",
                alert.alert_id, self.label, len(refused), len(self._config.to),
            )
