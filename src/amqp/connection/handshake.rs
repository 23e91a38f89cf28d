//! The connection handshake (start, start-ok, tune, tune-ok, open) and the other methods on
//! channel 0 (close, update-secret), as RabbitMQ answers them.

use amq_protocol::protocol::{AMQPClass, connection as amqp_connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::replies::method_error;
use super::{Connection, Phase};
use crate::amqp::session::{ClientCapabilities, Session};
use crate::amqp_error;
use crate::auth::sasl;
use crate::broker::stats::Opened;
use crate::config::MIN_FRAME_MAX_BYTES;
use crate::protocol::error::{AmqpError, ReplyCode};
use crate::protocol::method::{parse_method, write_method};

impl Connection {
    pub(super) fn on_connection_method(&mut self, payload: &[u8]) {
        let method = match parse_method(payload) {
            Ok(m) => m,
            Err(e) => {
                match self.phase {
                    Phase::StartOk | Phase::TuneOk => self.drop_silently(),
                    Phase::Closing { .. } => {}
                    _ => self.close_connection(method_error(e, payload, true), false),
                }
                return;
            }
        };
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        use amqp_connection::AMQPMethod as M;
        match (self.phase, method) {
            (Phase::StartOk, AMQPClass::Connection(M::StartOk(ok))) => self.on_start_ok(ok),
            (Phase::TuneOk, AMQPClass::Connection(M::TuneOk(ok))) => self.on_tune_ok(ok),
            (Phase::StartOk | Phase::TuneOk, _) => self.drop_silently(),
            (Phase::Open, AMQPClass::Connection(M::Open(open))) => self.on_open(open),
            (Phase::Running, AMQPClass::Connection(M::Close(close))) => {
                tracing::debug!(peer = %self.peer, code = close.reply_code, text = %close.reply_text, "client closed the connection");
                self.shutdown_channels();
                write_method(
                    self.out.buf(),
                    0,
                    &AMQPClass::Connection(M::CloseOk(amqp_connection::CloseOk {})),
                );
                self.finish();
            }
            (Phase::Running, AMQPClass::Connection(M::UpdateSecret(_))) => {
                write_method(
                    self.out.buf(),
                    0,
                    &AMQPClass::Connection(M::UpdateSecretOk(amqp_connection::UpdateSecretOk {})),
                );
            }
            (Phase::Closing { fatal, .. }, AMQPClass::Connection(M::Close(_))) => {
                if !fatal {
                    write_method(
                        self.out.buf(),
                        0,
                        &AMQPClass::Connection(M::CloseOk(amqp_connection::CloseOk {})),
                    );
                }
            }
            (Phase::Closing { fatal: false, .. }, AMQPClass::Connection(M::CloseOk(_))) => {
                self.finish();
            }
            (Phase::Closing { .. }, _) => {}
            (phase, _) => {
                let state = if phase == Phase::Open {
                    "opening"
                } else {
                    "running"
                };
                self.close_connection(
                    amqp_error!(
                        ChannelError,
                        "unexpected method in connection state {}",
                        state
                    )
                    .on_method(class_id, method_id),
                    false,
                );
            }
        }
    }

    pub(super) fn send_start(&mut self) {
        let config = &self.broker.config;
        let mut capabilities = FieldTable::default();
        // Only what Lepus really does: clients that rely on a capability must not be misled
        // (see LavinMQ #2186, which advertised connection.blocked without sending it).
        for cap in [
            "connection.blocked",
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            capabilities.insert(ShortString::from(cap), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        props.insert("cluster_name".into(), text(&self.broker.cluster_name()));
        props.insert("copyright".into(), text("Copyright (c) the Lepus authors"));
        props.insert(
            "information".into(),
            text("Licensed under the Apache License 2.0. An AMQP 0-9-1 broker compatible with RabbitMQ."),
        );
        props.insert(
            "platform".into(),
            text(concat!("Lepus ", env!("CARGO_PKG_VERSION"), " (Rust)")),
        );
        props.insert("product".into(), text(&config.product));
        props.insert("version".into(), text(&config.version));
        let start = amqp_connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from(
                sasl::offered(&config.auth_mechanisms, self.transport.is_tls()).into_bytes(),
            ),
            locales: LongString::from(b"en_US".to_vec()),
        };
        write_method(
            self.out.buf(),
            0,
            &AMQPClass::Connection(amqp_connection::AMQPMethod::Start(start)),
        );
    }

    pub(super) fn on_start_ok(&mut self, ok: amqp_connection::StartOk) {
        self.capabilities = ClientCapabilities::from_client_properties(&ok.client_properties);
        if let Some(name) = crate::protocol::table::get(&ok.client_properties, "connection_name")
            .and_then(crate::protocol::table::as_str)
        {
            self.client_name = name.to_owned();
        }
        let mechanism = ok.mechanism.as_str();
        self.start_ok = Some((
            crate::protocol::table::encode(&ok.client_properties).into(),
            mechanism.to_owned(),
        ));
        let offered = self
            .broker
            .config
            .auth_mechanisms
            .iter()
            .any(|m| m == mechanism);
        let response = if !offered {
            Err(sasl::ResponseError::UnknownMechanism(mechanism.to_owned()))
        } else if mechanism == "EXTERNAL" {
            // Without a certificate, or one with no name to use, the login is refused like
            // a wrong password (RabbitMQ: "no peer certificate"): no user has no name.
            Ok((self.certificate_user().unwrap_or_default(), String::new()))
        } else {
            sasl::parse_response(mechanism, ok.response.as_bytes())
        };
        let (name, password) = match response {
            Ok(creds) => creds,
            Err(e) => {
                tracing::warn!(peer = %self.peer, mechanism, error = ?e, "refused login: bad SASL response");
                self.drop_silently();
                return;
            }
        };
        let user = self
            .broker
            .user(&name)
            // EXTERNAL: the verified certificate stands for the password.
            .filter(|u| {
                let proven = if mechanism == "EXTERNAL" {
                    !name.is_empty()
                } else {
                    u.password_matches(&password)
                };
                proven && self.may_connect_from(&u.name)
            });
        let Some(user) = user else {
            // Debug-formatted: the name is whatever a client sent, and a line break in it
            // would forge a line of the log.
            tracing::warn!(peer = %self.peer, user = ?name, mechanism, "login refused");
            if self.capabilities.authentication_failure_close {
                let err = AmqpError::new(
                    ReplyCode::AccessRefused,
                    format!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    ),
                );
                self.write_close(&err);
            }
            self.drop_silently();
            return;
        };
        self.user = Some(user);
        let limits = &self.broker.config.limits;
        let tune = amqp_connection::Tune {
            channel_max: limits.channel_max,
            frame_max: limits.frame_max_bytes,
            heartbeat: limits.heartbeat_s,
        };
        write_method(
            self.out.buf(),
            0,
            &AMQPClass::Connection(amqp_connection::AMQPMethod::Tune(tune)),
        );
        self.phase = Phase::TuneOk;
    }

    /// The user name a verified client certificate stands for, as `ssl_cert_login_from`
    /// says: the subject's distinguished name (RabbitMQ's default) or its common name.
    fn certificate_user(&self) -> Option<String> {
        let rdns = crate::auth::x509::subject(self.transport.peer_certificate()?)?;
        match self.broker.config.ssl_cert_login_from {
            crate::config::CertLogin::DistinguishedName => {
                Some(crate::auth::x509::distinguished_name(&rdns))
            }
            crate::config::CertLogin::CommonName => crate::auth::x509::common_name(&rdns),
        }
    }

    /// RabbitMQ's `loopback_users` (guest by default) may only connect from this machine.
    fn may_connect_from(&self, user: &str) -> bool {
        let config = &self.broker.config;
        !config.loopback_users.iter().any(|u| u == user) || crate::auth::is_loopback(self.peer.ip())
    }

    pub(super) fn on_tune_ok(&mut self, ok: amqp_connection::TuneOk) {
        let limits = &self.broker.config.limits;
        // RabbitMQ's negotiation rules: the client may lower what was offered, not raise it,
        // and may not ask for "no limit". Anything else ends the connection silently.
        let frame_max_ok =
            ok.frame_max >= MIN_FRAME_MAX_BYTES && ok.frame_max <= limits.frame_max_bytes;
        let channel_max_ok = ok.channel_max != 0 && ok.channel_max <= limits.channel_max;
        if !frame_max_ok || !channel_max_ok {
            tracing::warn!(
                peer = %self.peer,
                frame_max = ok.frame_max,
                channel_max = ok.channel_max,
                "refused tune-ok outside the offered limits"
            );
            self.drop_silently();
            return;
        }
        self.frame_max = ok.frame_max;
        self.channel_max = ok.channel_max;
        self.heartbeat_s = ok.heartbeat;
        self.phase = Phase::Open;
    }

    pub(super) fn on_open(&mut self, open: amqp_connection::Open) {
        let name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(name) else {
            self.close_connection(
                amqp_error!(NotAllowed, "vhost {} not found", name).on_method(10, 40),
                false,
            );
            return;
        };
        let Some(user) = self.user.clone() else {
            self.drop_silently();
            return;
        };
        let slot = match vhost.open_connection() {
            Ok(slot) => slot,
            Err(max) => {
                // Same as RabbitMQ: a vhost at its connection limit refuses the open.
                self.close_connection(
                    amqp_error!(
                        NotAllowed,
                        "access to vhost '{}' refused for user '{}': connection limit ({}) is reached",
                        vhost.name,
                        user.name,
                        max
                    )
                    .on_method(10, 40),
                    false,
                );
                return;
            }
        };
        // Same as RabbitMQ: then the user's own connection limit.
        let user_slot = match self.broker.open_user_connection(&user.name) {
            Ok(slot) => slot,
            Err(max) => {
                self.close_connection(
                    amqp_error!(
                        NotAllowed,
                        "connection refused for user '{}': user connection limit ({}) is reached",
                        user.name,
                        max
                    )
                    .on_method(10, 40),
                    false,
                );
                return;
            }
        };
        // After the connection limits, as in RabbitMQ: a user without permissions in the
        // vhost may not open it.
        if let Err(e) = self.broker.access.check_vhost(&user.name, &vhost.name) {
            tracing::warn!(peer = %self.peer, user = %user.name, vhost = %vhost.name, "vhost access refused");
            self.close_connection(e.on_method(10, 40), false);
            return;
        }
        self.unopened = None; // Opened: its network's place is given back.
        tracing::info!(
            peer = %self.peer,
            user = %user.name,
            vhost = %vhost.name,
            client = %self.client_name,
            "connection opened"
        );
        let (client_properties, auth_mechanism) = self.start_ok.take().unwrap_or_default();
        self.outbox.info.set_opened(Opened {
            user: user.name.clone(),
            vhost: vhost.name.clone(),
            client_properties,
            auth_mechanism,
            frame_max: self.frame_max,
            channel_max: self.channel_max,
            heartbeat_s: self.heartbeat_s,
        });
        if !self.still_in(&vhost) {
            return;
        }
        crate::broker::stats::bump(&self.broker.ledger.churn.connections_opened, 1);
        self.session = Some(Session {
            broker: self.broker.clone(),
            vhost,
            user,
            connection_id: self.id,
            outbox: self.outbox.clone(),
            frame_max: self.frame_max,
            capabilities: self.capabilities,
            _slot: slot,
            user_slot,
            consumer_budget: self.broker.connection_consumer_budget(),
        });
        write_method(
            self.out.buf(),
            0,
            &AMQPClass::Connection(amqp_connection::AMQPMethod::OpenOk(
                amqp_connection::OpenOk {},
            )),
        );
        self.phase = Phase::Running;
        self.start_flow();
    }

    /// Whether `vhost`, which this connection just opened, is still the broker's. One
    /// deleted since it was looked up closed its connections before this one counted as
    /// opened (`Broker::delete_vhost`): this one closes itself, as they were, and says no.
    fn still_in(&mut self, vhost: &std::sync::Arc<crate::broker::vhost::VirtualHost>) -> bool {
        let ours = self.broker.vhost(&vhost.name);
        if ours.is_some_and(|v| std::sync::Arc::ptr_eq(&v, vhost)) {
            return true;
        }
        let e = amqp_error!(ConnectionForced, "vhost '{}' is deleted", vhost.name);
        self.close_connection(e, false);
        false
    }
}
