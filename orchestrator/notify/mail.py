"""Email over SMTP: multipart plain + HTML, the alert id in the subject, in
``X-Orchestrator-Alert-Id`` and in a stable ``Message-ID`` (receivers can de-duplicate)."""

from __future__ import annotations

import contextlib
import logging
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from html import escape

from orchestrator.egress.watchdog import Watchdog
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
        # ORCH_SMTP_TIMEOUT_S for the whole delivery: smtplib's timeout bounds each socket
        # operation only, and a server trickling its replies would hold a worker's thread
        deadline = Watchdog(s.smtp_timeout_s)
        conn: _SMTP | None = None
        needs = ""  # the extension the step under way needs, if the server lacks it
        try:
            with deadline:
                conn = _SMTP(deadline, s.smtp_host, s.smtp_port, s.smtp_timeout_s,
                             tls=ssl.create_default_context() if s.smtp_ssl else None)
                if s.smtp_starttls and not s.smtp_ssl:
                    needs = "STARTTLS"
                    conn.starttls(context=ssl.create_default_context())
                if s.smtp_user:
                    needs = "AUTH"
                    password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                    conn.login(s.smtp_user, password)
                needs = "SMTPUTF8"  # the only one sending asks for (a non-ASCII address)
                refused = conn.send_message(msg)
                # DATA was answered 250: the message is the server's now, whatever QUIT gets
                # (failing here would send it again, a duplicate for every recipient)
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    conn.quit()
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"smtp_{codes[0]}" if codes else "smtp_refused",
                detail="all recipients refused", label=self.label,
                transient=bool(codes) and all(400 <= c < 500 for c in codes),
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            # smtplib turns a read's timeout into SMTPServerDisconnected: the cause tells
            if deadline.fired or isinstance(exc, TimeoutError) or \
                    isinstance(exc.__context__, TimeoutError):
                raise DeliveryError("timeout", label=self.label, transient=True) from None
            if isinstance(exc, smtplib.SMTPNotSupportedError):
                # STARTTLS or AUTH may be switched on at the server (or was stripped on the
                # way): retried; an address the server cannot take never will be
                raise DeliveryError("smtp_unsupported", detail=needs, label=self.label,
                                    transient=needs != "SMTPUTF8") from None
            if isinstance(exc, smtplib.SMTPResponseException):  # its text is never kept
                raise DeliveryError(f"smtp_{exc.smtp_code}", label=self.label,
                                    transient=400 <= exc.smtp_code < 500) from None
            raise DeliveryError("connect_failed", detail=type(exc).__name__,  # refused, TLS
                                label=self.label, transient=True) from None
        finally:
            if conn is not None:
                conn.close()
        if refused:
            # Some recipients accepted it: delivered (a retry would duplicate it for them).
            log.warning(
                "alert %s: %s: %d of %d recipients refused",
                alert.alert_id, self.label, len(refused), len(self._config.to),
            )


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP whose connection the deadline watches from the moment it is made (the
    server's greeting is read in the constructor already); with ``tls``, TLS from the first
    byte (SMTPS, port 465), as smtplib.SMTP_SSL connects. The deadline watches a duplicate
    of the TCP socket: shutting that down ends the connection under the TLS socket that
    STARTTLS or ``tls`` wraps it in as well."""

    def __init__(self, deadline: Watchdog, host: str, port: int, timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self._deadline = deadline
        self._tls = tls
        self._watched: socket.socket | None = None
        try:
            super().__init__(host, port, timeout=timeout)
        except BaseException:  # no greeting: the caller never gets this object to close
            self.close()
            raise

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # what smtplib.SMTP._get_socket and SMTP_SSL._get_socket do (typeshed does not
        # declare them)
        sock = socket.create_connection((host, port), timeout, self.source_address)
        self._watched = sock.dup()
        self._deadline.watch(self._watched)
        if self._tls is not None:
            return self._tls.wrap_socket(sock, server_hostname=host)
        return sock

    def close(self) -> None:
        super().close()
        if self._watched is not None:
            self._watched.close()
            self._watched = None
