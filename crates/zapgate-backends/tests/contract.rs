//! The backends' contract, exercised directly: on a real SQLite file, or,
//! with `ZAPGATE_TEST_DATABASE_URL` set (the distributed pass of
//! `scripts/test.sh`), on a fresh PostgreSQL database per test.

use std::sync::Arc;
use zapgate_backends::*;
use zapgate_domain::message::Text;
use zapgate_domain::*;

/// Where a test's data lives; `open` stands in for a process starting.
struct Db {
    dir: tempfile::TempDir,
    postgres: Option<String>,
}

impl Db {
    async fn fresh() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let Some(admin) = std::env::var("ZAPGATE_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
            return Db { dir, postgres: None };
        };
        use sqlx::Connection;
        let name = format!("zg_c_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to ZAPGATE_TEST_DATABASE_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        let base = admin.rsplit_once('/').expect("a database URL has a path").0;
        Db { dir, postgres: Some(format!("{base}/{name}")) }
    }

    fn distributed(&self) -> bool {
        self.postgres.is_some()
    }

    async fn open(&self) -> Backends {
        match &self.postgres {
            Some(url) => Backends::open_postgres(url, 8, self.dir.path()).await.unwrap(),
            None => Backends::open_embedded(self.dir.path(), true).await.unwrap(),
        }
    }
}

struct Fixture {
    _db: Db,
    b: Backends,
    tenant: TenantId,
    instance: InstanceId,
}

async fn fixture() -> Fixture {
    fixture_on(Db::fresh().await).await
}

/// A tenant with one instance, in `db`.
async fn fixture_on(db: Db) -> Fixture {
    let b = db.open().await;
    let tenant = b.store.create_tenant(TenantId::generate(), "t".into(), new_token()).await.unwrap().0.id;
    let instance = InstanceId::generate();
    b.store
        .create_instance(NewInstance {
            id: instance.clone(),
            tenant_id: tenant.clone(),
            name: "i".into(),
            provider: "sandbox".into(),
            phone_number_id: format!("{}", rand_digits()),
            waba_id: "1".into(),
            phone_number: Some("15550783881".into()),
            rate_per_sec: 80,
            burst: 80,
            provider_config: serde_json::json!({}),
        })
        .await
        .unwrap();
    Fixture { _db: db, b, tenant, instance }
}

/// A webhook endpoint of the fixture's tenant for every event (internal ones
/// too), in the standard format.
fn endpoint(f: &Fixture) -> NewEndpoint {
    NewEndpoint {
        id: EndpointId::generate(),
        tenant_id: f.tenant.clone(),
        url: "https://example.com/hook".into(),
        description: String::new(),
        event_types: vec![],
        include_internal: true,
        instance_id: None,
        statuses: vec![],
        headers: std::collections::BTreeMap::new(),
        secret: zapgate_domain::webhook::WebhookSecret::generate(),
        format: zapgate_domain::webhook::WebhookFormat::Standard,
        app_secret: None,
    }
}

fn new_token() -> NewToken {
    let t = ApiToken::generate();
    NewToken { id: TokenId::generate(), hash: t.hash(), hint: t.hint() }
}

fn rand_digits() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64 % 1_000_000_000_000_000
}

fn request(f: &Fixture, to: &str, body: &str, priority: Priority) -> SendRequest {
    SendRequest {
        instance_id: f.instance.clone(),
        to: ChatId::parse(to).unwrap(),
        content: MessageContent::Text { text: Text { body: body.into(), preview_url: false } },
        priority,
        send_at: None,
        expires_at: None,
        reply_to: None,
    }
}

async fn accept(f: &Fixture, to: &str, priority: Priority) -> MessageId {
    let req = request(f, to, "x", priority);
    let m = AcceptMessage {
        campaign_id: None,
        id: MessageId::generate(),
        tenant_id: f.tenant.clone(),
        request: req,
        idempotency: None,
        now: Timestamp::now(),
    };
    match f.b.store.accept(m).await.unwrap() {
        Accepted::New { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

/// What the dispatcher does each round: promote what came due, then claim.
async fn claim(f: &Fixture, max: u32) -> Vec<MessageRecord> {
    f.b.queue.promote_due(Timestamp::now()).await.unwrap();
    let claims = [Claim { instance_id: f.instance.clone(), max }];
    f.b.queue.claim_and_begin(&claims, Timestamp::now(), 60_000).await.unwrap().unwrap().won
}

async fn sent(f: &Fixture, id: &MessageId, provider_id: &str) {
    let o = SendOutcome {
        message_id: id.clone(),
        result: SendResult::Sent { provider_message_id: provider_id.into(), wa_id: None },
        retry_limit: 5,
        now: Timestamp::now(),
    };
    assert_eq!(f.b.store.record_outcome(o).await.unwrap(), OutcomeApplied::Done(MessageStatus::Sent));
}

#[tokio::test]
async fn concurrent_accepts_with_one_key_store_one_message_and_never_fail_the_batch() {
    let f = Arc::new(fixture().await);
    let mut tasks = Vec::new();
    for n in 0..40 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let req = request(&f, "+5511999998888", "same", Priority::Normal);
            let fingerprint = req.fingerprint();
            // Half the requests reuse one key; the others have their own.
            let key = if n % 2 == 0 { "shared".to_owned() } else { format!("own-{n}") };
            let m = AcceptMessage {
                campaign_id: None,
                id: MessageId::generate(),
                tenant_id: f.tenant.clone(),
                request: req,
                idempotency: Some(IdempotencyKey { key, fingerprint }),
                now: Timestamp::now(),
            };
            f.b.store.accept(m).await.unwrap()
        }));
    }
    let mut new = 0;
    let mut replayed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Accepted::New { .. } => new += 1,
            Accepted::Replayed { id, .. } => replayed.push(id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(new, 21, "20 own keys + the first of the shared key");
    assert_eq!(replayed.len(), 19);
    assert!(replayed.windows(2).all(|w| w[0] == w[1]), "every replay names the same message");
}

/// Concurrent accepts commit together (PostgreSQL: one batch transaction;
/// SQLite: one writer batch): new messages, a conflicting key and unknown
/// instances mixed in one burst each get their own answer, and the chat
/// sequence numbers of each chat come out gap-free and unique.
#[tokio::test]
async fn a_burst_mixing_new_conflicting_and_unknown_accepts_answers_each() {
    let f = Arc::new(fixture().await);
    let keyed = |f: &Fixture, body: &str| {
        let req = request(f, "+5511999997777", body, Priority::Normal);
        let fingerprint = req.fingerprint();
        AcceptMessage {
            campaign_id: None,
            id: MessageId::generate(),
            tenant_id: f.tenant.clone(),
            request: req,
            idempotency: Some(IdempotencyKey { key: "used".into(), fingerprint }),
            now: Timestamp::now(),
        }
    };
    assert!(matches!(f.b.store.accept(keyed(&f, "first")).await.unwrap(), Accepted::New { .. }));
    let mut tasks = Vec::new();
    for n in 0..60 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let m = match n % 5 {
                0 => {
                    let mut req = request(&f, "+5511999990001", "nowhere", Priority::Normal);
                    req.instance_id = InstanceId::generate();
                    AcceptMessage {
                        campaign_id: None,
                        id: MessageId::generate(),
                        tenant_id: f.tenant.clone(),
                        request: req,
                        idempotency: None,
                        now: Timestamp::now(),
                    }
                }
                1 => keyed(&f, "different"),
                _ => AcceptMessage {
                    campaign_id: None,
                    id: MessageId::generate(),
                    tenant_id: f.tenant.clone(),
                    request: request(&f, &format!("+551199999000{}", n % 3), "burst", Priority::Normal),
                    idempotency: None,
                    now: Timestamp::now(),
                },
            };
            (n, f.b.store.accept(m).await.unwrap())
        }));
    }
    let mut new = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (n, Accepted::UnknownInstance) => assert_eq!(n % 5, 0),
            (n, Accepted::KeyReused) => assert_eq!(n % 5, 1),
            (n, Accepted::New { id, .. }) => {
                assert!(n % 5 >= 2, "{n} accepted");
                new.push(id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(new.len(), 36);
    let mut per_chat: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for id in &new {
        let m = f.b.store.get_message(&f.tenant, id).await.unwrap().unwrap();
        per_chat.entry(m.to.key()).or_default().push(m.chat_seq);
    }
    for (chat, mut seqs) in per_chat {
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "chat {chat}");
    }
}

/// A send's `reply_to` is stored with its message and read back, whichever
/// way the accept went: alone, in a burst that commits together (PostgreSQL:
/// the group-committed batch), and in a burst whose batch fails (a message id
/// stored already) so the others are accepted one by one.
#[tokio::test]
async fn reply_to_is_stored_with_the_message_on_every_accept_path() {
    let f = Arc::new(fixture().await);
    let with = |f: &Fixture, id: MessageId, n: usize, reply_to: Option<String>| AcceptMessage {
        campaign_id: None,
        id,
        tenant_id: f.tenant.clone(),
        request: SendRequest { reply_to, ..request(f, &format!("+55119999{:05}", n % 4), "re", Priority::Normal) },
        idempotency: None,
        now: Timestamp::now(),
    };
    let stored = |id: &MessageId| {
        let f = f.clone();
        let id = id.clone();
        async move { f.b.store.get_message(&f.tenant, &id).await.unwrap().unwrap().reply_to }
    };
    // Alone.
    let quoting = MessageId::generate();
    let quoted = Some("msg_0123456789abcdef0123456789abcdex".to_owned());
    let plain = MessageId::generate();
    for m in [with(&f, quoting.clone(), 0, quoted.clone()), with(&f, plain.clone(), 1, None)] {
        assert!(matches!(f.b.store.accept(m).await.unwrap(), Accepted::New { .. }));
    }
    assert_eq!(stored(&quoting).await, quoted);
    assert_eq!(stored(&plain).await, None);
    let listed = f.b.store.list_messages(&f.tenant, &MessageFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed.iter().find(|m| m.id == quoting).unwrap().reply_to, quoted, "list_messages reads it too");

    // A burst; the second has one accept (n = 7) reusing a stored message id.
    let own = |n: usize| (!n.is_multiple_of(3)).then(|| format!("wamid.reply-{n}"));
    for failing in [false, true] {
        let tasks: Vec<_> = (0..30)
            .map(|n| {
                let f = f.clone();
                let id = if failing && n == 7 { plain.clone() } else { MessageId::generate() };
                let m = with(&f, id.clone(), n, own(n));
                tokio::spawn(async move { (n, id, f.b.store.accept(m).await) })
            })
            .collect();
        for (n, id, answer) in futures::future::join_all(tasks).await.into_iter().map(|t| t.unwrap()) {
            if failing && n == 7 {
                assert!(answer.is_err(), "a second message with one id: {answer:?}");
                continue;
            }
            assert!(matches!(answer, Ok(Accepted::New { .. })), "{n}: {answer:?}");
            assert_eq!(stored(&id).await, own(n), "message {n} of the burst (failing batch: {failing})");
        }
    }
    assert_eq!(stored(&plain).await, None, "the duplicate id changed nothing");
}

#[tokio::test]
async fn a_failing_job_does_not_fail_others_in_its_batch() {
    let f = Arc::new(fixture().await);
    let mut tasks = Vec::new();
    for n in 0..30 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            if n % 3 == 0 {
                // Fails inside the writer (no such tenant) and is rolled back alone.
                f.b.store.create_token(&TenantId::generate(), new_token()).await.is_ok()
            } else {
                f.b.store.create_token(&f.tenant, new_token()).await.is_ok()
            }
        }));
    }
    let results: Vec<bool> = futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    for (n, ok) in results.iter().enumerate() {
        assert_eq!(*ok, n % 3 != 0, "job {n}");
    }
    assert_eq!(f.b.store.list_tokens(&f.tenant).await.unwrap().len(), 21, "20 + the first token");
}

#[tokio::test]
async fn only_chat_heads_are_claimed_and_settling_promotes_the_next() {
    let f = fixture().await;
    let a1 = accept(&f, "+5511900000001", Priority::Normal).await;
    let a2 = accept(&f, "+5511900000001", Priority::Normal).await;
    let b1 = accept(&f, "+5511900000002", Priority::Normal).await;
    let first: Vec<_> = claim(&f, 10).await.into_iter().map(|m| m.id).collect();
    assert_eq!(first, [a1.clone(), b1.clone()]);
    assert!(claim(&f, 10).await.is_empty(), "a2 waits for a1");
    sent(&f, &a1, "p-a1").await;
    let next: Vec<_> = claim(&f, 10).await.into_iter().map(|m| m.id).collect();
    assert_eq!(next, [a2]);
}

/// Races the settling of a chat's head with the cancel of the message behind
/// it (and with claims): the chat must never be left without a head, and the
/// two must never deadlock. Each round checks that the third message of the
/// chat is claimable once both are done.
#[tokio::test]
async fn cancels_racing_settles_and_claims_never_strand_a_chat() {
    let f = Arc::new(fixture().await);
    for round in 0..25 {
        let chat = format!("+55119{round:08}");
        let first = accept(&f, &chat, Priority::Normal).await;
        let second = accept(&f, &chat, Priority::Normal).await;
        let third = accept(&f, &chat, Priority::Normal).await;
        assert_eq!(claim(&f, 10).await.into_iter().map(|m| m.id).collect::<Vec<_>>(), std::slice::from_ref(&first));
        let (a, b, c) = (f.clone(), f.clone(), f.clone());
        let (tenant, second2) = (f.tenant.clone(), second.clone());
        let settle = tokio::spawn(async move { sent(&a, &first, &format!("p-{round}")).await });
        let cancel =
            tokio::spawn(async move { b.b.store.cancel_message(&tenant, &second2, Timestamp::now()).await.unwrap() });
        let claims = tokio::spawn(async move { claim(&c, 10).await });
        settle.await.unwrap();
        let cancelled = cancel.await.unwrap();
        let mut got: Vec<_> = claims.await.unwrap().into_iter().map(|m| m.id).collect();
        match cancelled {
            Cancel::Cancelled => {}
            // The settle promoted `second` and the claim took it before the
            // cancel ran: too late to cancel, so it is sent, then the chat moves on.
            Cancel::TooLate(MessageStatus::Sending) => {
                assert_eq!(got, std::slice::from_ref(&second), "round {round}: only a claimed message is too late");
                sent(&f, &second, &format!("p2-{round}")).await;
                got.clear();
            }
            other => panic!("round {round}: cancel answered {other:?}"),
        }
        if got.is_empty() {
            got = claim(&f, 10).await.into_iter().map(|m| m.id).collect();
        }
        assert_eq!(got, std::slice::from_ref(&third), "round {round}: the chat's last message must be claimable");
        sent(&f, &third, &format!("p3-{round}")).await;
    }
}

#[tokio::test]
async fn priority_orders_within_an_instance() {
    let f = fixture().await;
    let low = accept(&f, "+5511900000001", Priority::Low).await;
    let normal = accept(&f, "+5511900000002", Priority::Normal).await;
    let high = accept(&f, "+5511900000003", Priority::High).await;
    let order: Vec<_> = claim(&f, 10).await.into_iter().map(|m| m.id).collect();
    assert_eq!(order, [high, normal, low]);
}

#[tokio::test]
async fn a_retry_keeps_the_chat_blocked_until_it_is_due() {
    let f = fixture().await;
    let a1 = accept(&f, "+5511900000001", Priority::Normal).await;
    let _a2 = accept(&f, "+5511900000001", Priority::Normal).await;
    assert_eq!(claim(&f, 10).await.len(), 1);
    let o = SendOutcome {
        message_id: a1.clone(),
        result: SendResult::Retry {
            retry_at: Timestamp::now().plus_millis(150),
            spend_attempt: true,
            code: "x".into(),
            message: "y".into(),
        },
        retry_limit: 5,
        now: Timestamp::now(),
    };
    assert!(matches!(f.b.store.record_outcome(o).await.unwrap(), OutcomeApplied::RetryAt { attempts: 1, .. }));
    assert!(claim(&f, 10).await.is_empty(), "neither a1 (not due) nor a2 (behind a1)");
    let due = f.b.queue.next_due(Timestamp::now()).await.unwrap().expect("a1 waits");
    assert!(due > Timestamp::now());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(f.b.queue.promote_due(Timestamp::now()).await.unwrap(), std::slice::from_ref(&f.instance));
    let again = claim(&f, 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.clone(), again[0].attempts), (a1, 1));
}

/// Outcomes reported at the same time (stored together where the backend
/// batches them): each gets its own answer, each chat's queue is settled to
/// match, statuses parked for the sent ones are applied, and a second outcome
/// for one message is stale.
#[tokio::test]
async fn concurrent_outcomes_are_each_applied_and_settle_their_chats() {
    let f = Arc::new(fixture().await);
    let chats: Vec<String> = (0..40).map(|n| format!("+55119{n:08}")).collect();
    let mut behind = Vec::new();
    for chat in &chats {
        accept(&f, chat, Priority::Normal).await;
        behind.push(accept(&f, chat, Priority::Normal).await);
    }
    let heads = claim(&f, 100).await;
    assert_eq!(heads.len(), chats.len(), "one head per chat");
    // Chat n: sent (and read reported before the send result) when n % 4 == 0,
    // sent when 1, a retry due in an hour when 2, failed for good when 3.
    let report = |p: String| ProviderStatusReport {
        instance_id: None,
        provider_message_id: p,
        status: MessageStatus::Read,
        at: Timestamp::now(),
        error_code: None,
        error_message: None,
    };
    for n in (0..heads.len()).step_by(4) {
        let parked = f.b.store.apply_provider_status(report(format!("p-{n}"))).await.unwrap();
        assert_eq!(parked, StatusApplied::Parked);
    }
    let outcome = |n: usize, id: &MessageId| SendOutcome {
        message_id: id.clone(),
        result: match n % 4 {
            0 | 1 => SendResult::Sent { provider_message_id: format!("p-{n}"), wa_id: None },
            2 => SendResult::Retry {
                retry_at: Timestamp::now().plus_millis(3_600_000),
                spend_attempt: true,
                code: "busy".into(),
                message: "try later".into(),
            },
            _ => SendResult::Failed { code: "bad".into(), message: "refused".into() },
        },
        retry_limit: 5,
        now: Timestamp::now(),
    };
    let mut tasks = Vec::new();
    for (n, m) in heads.iter().enumerate() {
        let (f, o) = (f.clone(), outcome(n, &m.id));
        tasks.push(tokio::spawn(async move { f.b.store.record_outcome(o).await.unwrap() }));
    }
    // The same send result twice for chat 1's head, at the same time as the rest.
    let repeat = {
        let (f, o) = (f.clone(), outcome(1, &heads[1].id));
        tokio::spawn(async move { f.b.store.record_outcome(o).await.unwrap() })
    };
    let applied: Vec<OutcomeApplied> = futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let repeated = repeat.await.unwrap();
    let mut stale = 0;
    for (n, (m, a)) in heads.iter().zip(&applied).enumerate() {
        let stored = f.b.store.get_message(&f.tenant, &m.id).await.unwrap().unwrap();
        match n % 4 {
            0 => {
                assert_eq!((a, stored.status), (&OutcomeApplied::Done(MessageStatus::Sent), MessageStatus::Read), "{n}")
            }
            1 if *a == OutcomeApplied::Stale => stale += 1,
            1 => {
                assert_eq!((a, stored.status), (&OutcomeApplied::Done(MessageStatus::Sent), MessageStatus::Sent), "{n}")
            }
            2 => {
                assert!(matches!(a, OutcomeApplied::RetryAt { attempts: 1, .. }), "{n}: {a:?}");
                assert_eq!(stored.status, MessageStatus::RetryWait, "{n}");
            }
            _ => assert_eq!(
                (a, stored.status),
                (&OutcomeApplied::Done(MessageStatus::Failed), MessageStatus::Failed),
                "{n}"
            ),
        }
        if n % 4 < 2 {
            assert_eq!(stored.provider_message_id.as_deref(), Some(format!("p-{n}").as_str()), "{n}");
        }
    }
    // Of the two outcomes for chat 1's head, exactly one stored it.
    stale += usize::from(repeated == OutcomeApplied::Stale);
    assert_eq!(stale, 1, "first {:?}, repeat {repeated:?}", applied[1]);
    let sent_events = f.b.store.message_history(&f.tenant, &heads[1].id).await.unwrap();
    let sent_events = sent_events.iter().filter(|e| e.status == Some(MessageStatus::Sent)).count();
    assert_eq!(sent_events, 1, "one sent event for the message sent twice");
    // Every chat whose head is done now offers its second message; the
    // chats waiting for a retry offer nothing.
    let mut next: Vec<MessageId> = claim(&f, 100).await.into_iter().map(|m| m.id).collect();
    let mut expected: Vec<MessageId> =
        behind.iter().enumerate().filter(|(n, _)| n % 4 != 2).map(|(_, id)| id.clone()).collect();
    next.sort_by_key(|id| id.to_string());
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(next, expected);
}

fn inbound(f: &Fixture, wa_message_id: &str, chat: &str) -> InboundItem {
    InboundItem {
        tenant_id: f.tenant.clone(),
        instance_id: f.instance.clone(),
        event: InboundEvent::Message(NewInbound {
            id: MessageId::generate(),
            chat: chat.into(),
            body: event::ReceivedMessage {
                wa_message_id: wa_message_id.into(),
                chat: chat.into(),
                sender: None,
                sender_name: None,
                from_me: false,
                content: serde_json::json!({"type": "text", "text": {"body": wa_message_id}}),
                context_id: None,
                sent_at: Timestamp::now(),
            },
            media: None,
        }),
    }
}

/// Provider POSTs taken in at the same time (in one transaction where the
/// backend batches them): each chat's messages get gapless sequence numbers,
/// a message the provider sent twice at once is stored once, and a POST of
/// other items is answered item by item.
#[tokio::test]
async fn concurrent_ingests_number_each_chat_and_store_a_resent_message_once() {
    let f = Arc::new(fixture().await);
    let chats = ["5511900000001", "5511900000002", "5511900000003"];
    let mut posts: Vec<Vec<InboundItem>> = Vec::new();
    for n in 0..60 {
        posts.push(vec![inbound(&f, &format!("wa-{n}"), chats[n % 3])]);
    }
    posts.push(vec![inbound(&f, "wa-30", chats[0])]);
    let status = InboundItem {
        tenant_id: f.tenant.clone(),
        instance_id: f.instance.clone(),
        event: InboundEvent::Status(ProviderStatusReport {
            instance_id: None,
            provider_message_id: "not-sent-yet".into(),
            status: MessageStatus::Delivered,
            at: Timestamp::now(),
            error_code: None,
            error_message: None,
        }),
    };
    posts.push(vec![inbound(&f, "wa-mixed", chats[2]), status]);
    let tasks: Vec<_> = posts
        .into_iter()
        .map(|items| {
            let f = f.clone();
            tokio::spawn(async move { f.b.inbox.ingest(items, Timestamp::now()).await.unwrap() })
        })
        .collect();
    let answers: Vec<Vec<InboundOutcome>> =
        futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let received = |o: &InboundOutcome| matches!(o, InboundOutcome::Received(_));
    for (n, a) in answers[..60].iter().enumerate().filter(|(n, _)| *n != 30) {
        assert!(a.len() == 1 && received(&a[0]), "POST {n}: {a:?}");
    }
    let twice = [&answers[30][0], &answers[60][0]];
    assert_eq!(twice.iter().filter(|o| received(o)).count(), 1, "wa-30 stored once: {twice:?}");
    assert!(twice.contains(&&InboundOutcome::Duplicate), "{twice:?}");
    assert!(received(&answers[61][0]), "{:?}", answers[61]);
    assert_eq!(answers[61][1], InboundOutcome::Status(StatusApplied::Parked));
    for (c, chat) in chats.iter().enumerate() {
        let filter = InboundFilter { chat: Some((*chat).into()), limit: 100, ..Default::default() };
        let stored = f.b.inbox.list_inbound(&f.tenant, &filter).await.unwrap();
        let mut seqs: Vec<i64> = stored.iter().map(|m| m.chat_seq).collect();
        seqs.sort_unstable();
        let expected = 20 + usize::from(c == 2);
        assert_eq!(seqs, (1..=expected as i64).collect::<Vec<_>>(), "chat {chat}");
    }
}

/// Several statuses of one message in one POST (taken in together where the
/// backend batches them) end where they would one by one: forward only, a
/// repeated report a duplicate, each kept in the history.
#[tokio::test]
async fn statuses_of_one_message_in_one_post_apply_in_order() {
    let f = fixture().await;
    let a = accept(&f, "+5511900000001", Priority::Normal).await;
    let b = accept(&f, "+5511900000002", Priority::Normal).await;
    claim(&f, 10).await;
    sent(&f, &a, "p-a").await;
    sent(&f, &b, "p-b").await;
    let status = |p: &str, status| InboundItem {
        tenant_id: f.tenant.clone(),
        instance_id: f.instance.clone(),
        event: InboundEvent::Status(ProviderStatusReport {
            instance_id: None,
            provider_message_id: p.into(),
            status,
            at: Timestamp::now(),
            error_code: None,
            error_message: None,
        }),
    };
    let (delivered, read) = (MessageStatus::Delivered, MessageStatus::Read);
    let post_a = vec![status("p-a", delivered), status("p-a", read), status("p-a", delivered)];
    let post_b = vec![status("p-b", read), status("p-b", delivered), status("p-none", read)];
    let (got_a, got_b) =
        tokio::join!(f.b.inbox.ingest(post_a, Timestamp::now()), f.b.inbox.ingest(post_b, Timestamp::now()));
    let s = |a: StatusApplied| InboundOutcome::Status(a);
    assert_eq!(got_a.unwrap(), [s(StatusApplied::Applied), s(StatusApplied::Applied), InboundOutcome::Duplicate]);
    assert_eq!(got_b.unwrap(), [s(StatusApplied::Applied), s(StatusApplied::Ignored), s(StatusApplied::Parked)]);
    for id in [&a, &b] {
        assert_eq!(f.b.store.get_message(&f.tenant, id).await.unwrap().unwrap().status, read);
    }
    let history: Vec<_> = f.b.store.message_history(&f.tenant, &b).await.unwrap();
    let reported: Vec<_> = history.iter().rev().take(2).map(|e| (e.status, e.detail.applied)).collect();
    assert_eq!(reported, [(Some(delivered), false), (Some(read), true)], "newest first");
}

#[tokio::test]
async fn recovery_requeues_in_flight_messages_without_spending_attempts() {
    let f = fixture().await;
    let (tenant, id) = (f.tenant.clone(), accept(&f, "+5511900000001", Priority::Normal).await);
    assert_eq!(claim(&f, 10).await.len(), 1);
    // The process "dies" here: the message is `sending`, its entry leased.
    // Its file lock (SQLite) or owner lock (PostgreSQL) goes with it.
    let Fixture { _db: db, b, .. } = f;
    drop(b);
    let b = db.open().await;
    // Postgres frees a dead session's locks once it sees the connection close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.queue.recover(Timestamp::now()).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the dead process's lease was never returned");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let m = b.store.get_message(&tenant, &id).await.unwrap().unwrap();
    assert_eq!((m.status, m.attempts), (MessageStatus::Queued, 0));
    let again =
        b.queue.claim_and_begin(&[Claim { instance_id: m.instance_id.clone(), max: 5 }], Timestamp::now(), 1000).await;
    assert_eq!(again.unwrap().unwrap().won.len(), 1);
    let history = b.store.message_history(&tenant, &id).await.unwrap();
    let s: Vec<_> = history.iter().map(|e| e.status.map_or("", |s| s.as_str())).collect();
    assert_eq!(s, ["queued", "sending", "queued", "sending"]);
}

#[tokio::test]
async fn a_second_serve_cannot_open_the_same_data_dir() {
    let db = Db::fresh().await;
    if db.distributed() {
        return two_processes_never_claim_the_same_entry(db).await;
    }
    let dir = db.dir.path();
    let _first = Backends::open_embedded(dir, true).await.unwrap();
    match Backends::open_embedded(dir, true).await {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("two exclusive opens of one data dir"),
    }
    // Non-exclusive users (the CLI) may still open it.
    Backends::open_embedded(dir, false).await.unwrap();
}

/// PostgreSQL is shared by design: several processes claim at once, and each
/// entry goes to exactly one of them, and a live process's leases stay its own.
async fn two_processes_never_claim_the_same_entry(db: Db) {
    let f = fixture_on(db).await;
    let other = f._db.open().await;
    let mut ids = std::collections::HashSet::new();
    for n in 0..200 {
        ids.insert(accept(&f, &format!("+55119{n:08}"), Priority::Normal).await);
    }
    let claims = [Claim { instance_id: f.instance.clone(), max: 7 }];
    let round = |b: Backends| {
        let claims = claims.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let won = b.queue.claim_and_begin(&claims, Timestamp::now(), 60_000).await.unwrap().unwrap().won;
                if won.is_empty() {
                    return got;
                }
                got.extend(won.into_iter().map(|m| m.id));
            }
        })
    };
    let (a, b) = (round(f.b.clone()), round(other.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(!a.is_empty() && !b.is_empty(), "both processes claimed ({} / {})", a.len(), b.len());
    let mut all: Vec<_> = a.iter().chain(&b).cloned().collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "an entry was claimed twice");
    assert_eq!(all.into_iter().collect::<std::collections::HashSet<_>>(), ids, "every entry claimed once");
    // Both processes are alive: neither may take the other's leases.
    assert_eq!(other.queue.recover(Timestamp::now()).await.unwrap(), 0);
    assert_eq!(f.b.queue.recover(Timestamp::now()).await.unwrap(), 0);
}

#[tokio::test]
async fn provider_statuses_move_forward_only_and_early_ones_are_parked() {
    let f = fixture().await;
    let id = accept(&f, "+5511900000001", Priority::Normal).await;
    claim(&f, 1).await;
    let report = |status| ProviderStatusReport {
        instance_id: None,
        provider_message_id: "p1".into(),
        status,
        at: Timestamp::now(),
        error_code: None,
        error_message: None,
    };
    // Arrives before the send result is stored.
    assert_eq!(f.b.store.apply_provider_status(report(MessageStatus::Read)).await.unwrap(), StatusApplied::Parked);
    sent(&f, &id, "p1").await;
    let m = f.b.store.get_message(&f.tenant, &id).await.unwrap().unwrap();
    assert_eq!(m.status, MessageStatus::Read, "the parked read was applied with the send result");
    assert_eq!(
        f.b.store.apply_provider_status(report(MessageStatus::Delivered)).await.unwrap(),
        StatusApplied::Ignored,
        "late delivered after read"
    );
    assert_eq!(f.b.store.apply_provider_status(report(MessageStatus::Failed)).await.unwrap(), StatusApplied::Ignored);
    let history = f.b.store.message_history(&f.tenant, &id).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.status, last.detail.applied),
        (Some(MessageStatus::Failed), false),
        "kept in history, not applied"
    );
    assert_eq!(f.b.store.get_message(&f.tenant, &id).await.unwrap().unwrap().status, MessageStatus::Read);
}

#[tokio::test]
async fn finished_webhook_deliveries_are_purged_pending_ones_kept() {
    let f = fixture().await;
    f.b.webhooks.create_endpoint(endpoint(&f)).await.unwrap();
    accept(&f, "+5511900000001", Priority::Normal).await;
    accept(&f, "+5511900000002", Priority::Normal).await;
    let now = Timestamp::now();
    assert!(f.b.webhooks.fan_out(100, now).await.unwrap() >= 2);
    let jobs = f.b.webhooks.claim_deliveries(now, 10, 10, 60_000).await.unwrap();
    assert_eq!(jobs.len(), 2, "one delivery per queued event");
    let done = AttemptOutcome {
        delivery: jobs[0].id.clone(),
        attempt: 1,
        at: now,
        duration_ms: 1,
        result: AttemptResult::Succeeded { status_code: 204 },
        response: None,
    };
    f.b.webhooks.record_attempt(done).await.unwrap();
    let later = now.plus_millis(60_000);
    assert_eq!(f.b.webhooks.purge_deliveries(later, 100).await.unwrap(), 1, "only the finished one");
    assert!(f.b.webhooks.get_delivery(&f.tenant, &jobs[0].id).await.unwrap().is_none());
    assert!(f.b.webhooks.get_delivery(&f.tenant, &jobs[1].id).await.unwrap().is_some());
}

#[tokio::test]
async fn deliveries_are_claimed_within_each_endpoints_room_and_gone_disables_the_endpoint() {
    use zapgate_domain::webhook::WebhookFormat;
    let f = fixture().await;
    let mut endpoints = Vec::new();
    for n in 0..2 {
        let e =
            f.b.webhooks
                .create_endpoint(NewEndpoint {
                    url: format!("https://example.com/hook{n}"),
                    // The second takes Cloud API-shaped payloads: its jobs carry its app secret.
                    format: if n == 1 { WebhookFormat::CloudApi } else { WebhookFormat::Standard },
                    app_secret: (n == 1).then(|| "s3cret-app".to_owned()),
                    ..endpoint(&f)
                })
                .await
                .unwrap();
        endpoints.push(e.id);
    }
    for n in 0..3 {
        accept(&f, &format!("+551190000000{n}"), Priority::Normal).await;
    }
    let now = Timestamp::now();
    while f.b.webhooks.fan_out(100, now).await.unwrap() > 0 {}
    let first = f.b.webhooks.claim_deliveries(now, 10, 1, 60_000).await.unwrap();
    let mut got: Vec<_> = first.iter().map(|j| j.endpoint_id.clone()).collect();
    got.sort();
    let mut want = endpoints.clone();
    want.sort();
    assert_eq!(got, want, "one delivery per endpoint while each has room for one");
    assert!(f.b.webhooks.claim_deliveries(now, 10, 1, 60_000).await.unwrap().is_empty(), "both endpoints full");

    let gone = first.iter().find(|j| j.endpoint_id == endpoints[0]).unwrap();
    let kept = first.iter().find(|j| j.endpoint_id == endpoints[1]).unwrap();
    assert_eq!((gone.cloud_app_secret.as_deref(), kept.cloud_app_secret.as_deref()), (None, Some("s3cret-app")));
    assert_eq!(
        (gone.format, kept.format),
        (WebhookFormat::Standard, WebhookFormat::CloudApi),
        "each job carries its endpoint's format"
    );
    let listed = f.b.webhooks.list_endpoints(&f.tenant).await.unwrap();
    let format_of = |id: &EndpointId| listed.iter().find(|e| &e.id == id).unwrap().format;
    assert_eq!(
        (format_of(&endpoints[0]), format_of(&endpoints[1])),
        (WebhookFormat::Standard, WebhookFormat::CloudApi)
    );
    let instance = f.b.store.get_instance(&f.tenant, &f.instance).await.unwrap().unwrap();
    assert_eq!(instance.phone_number.as_deref(), Some("15550783881"), "the instance's own number is kept");
    let outcome = |job: &zapgate_backends::DeliveryJob, result| AttemptOutcome {
        delivery: job.id.clone(),
        attempt: 1,
        at: now,
        duration_ms: 3,
        result,
        response: Some("bye".into()),
    };
    f.b.webhooks
        .record_attempt(outcome(gone, AttemptResult::Gone { status_code: 410, error: "gone".into() }))
        .await
        .unwrap();
    f.b.webhooks.record_attempt(outcome(kept, AttemptResult::Succeeded { status_code: 200 })).await.unwrap();
    let disabled = f.b.webhooks.get_endpoint(&f.tenant, &endpoints[0]).await.unwrap().unwrap();
    assert!(!disabled.enabled, "410 Gone disables the endpoint");
    let (d, attempts) = f.b.webhooks.get_delivery(&f.tenant, &gone.id).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Dead);
    assert_eq!((attempts[0].status_code, attempts[0].response.as_deref()), (Some(410), Some("bye")));
    assert_eq!(f.b.webhooks.dead_deliveries().await.unwrap(), 1);

    let next = f.b.webhooks.claim_deliveries(now, 10, 1, 60_000).await.unwrap();
    assert_eq!(next.len(), 1, "the enabled endpoint has room again; the disabled one's wait");
    assert_eq!(next[0].endpoint_id, endpoints[1]);

    let replayed = f.b.webhooks.replay_dead(&f.tenant, &endpoints[0], Timestamp::from_millis(0), now).await.unwrap();
    assert_eq!(replayed, 1);
    assert_eq!(f.b.webhooks.dead_deliveries().await.unwrap(), 0);
    let other_tenant = TenantId::generate();
    assert_eq!(
        f.b.webhooks.replay_dead(&other_tenant, &endpoints[0], Timestamp::from_millis(0), now).await.unwrap(),
        0
    );
}

/// Attempts that end at the same time (recorded together where the backend
/// batches them): each delivery moves on by its own result, a second result
/// for one delivery changes nothing, and a delivery that died raises
/// `webhook.delivery_failed`.
#[tokio::test]
async fn concurrent_attempts_each_move_their_delivery_on() {
    let f = Arc::new(fixture().await);
    f.b.webhooks.create_endpoint(endpoint(&f)).await.unwrap();
    for n in 0..30 {
        accept(&f, &format!("+55119{n:08}"), Priority::Normal).await;
    }
    let now = Timestamp::now();
    while f.b.webhooks.fan_out(100, now).await.unwrap() > 0 {}
    let jobs = f.b.webhooks.claim_deliveries(now, 100, 100, 60_000).await.unwrap();
    assert_eq!(jobs.len(), 30);
    // Job n: succeeded when n % 3 == 0, failed with a retry when 1, failed for good when 2.
    let result = |n: usize| match n % 3 {
        0 => AttemptResult::Succeeded { status_code: 200 },
        1 => AttemptResult::Failed {
            status_code: Some(503),
            error: "busy".into(),
            retry_at: Some(now.plus_millis(60_000)),
        },
        _ => AttemptResult::Failed { status_code: Some(400), error: "bad".into(), retry_at: None },
    };
    let outcome = |job: &zapgate_backends::DeliveryJob, result| AttemptOutcome {
        delivery: job.id.clone(),
        attempt: 1,
        at: now,
        duration_ms: 2,
        result,
        response: Some("ok".into()),
    };
    let mut tasks = Vec::new();
    for (n, job) in jobs.iter().enumerate() {
        let (f, o) = (f.clone(), outcome(job, result(n)));
        tasks.push(tokio::spawn(async move { f.b.webhooks.record_attempt(o).await.unwrap() }));
    }
    // A second result for job 0, at the same time: it must change nothing.
    let (f2, late) = (f.clone(), outcome(&jobs[0], result(2)));
    tasks.push(tokio::spawn(async move { f2.b.webhooks.record_attempt(late).await.unwrap() }));
    futures::future::join_all(tasks).await.into_iter().for_each(|r| r.unwrap());
    for (n, job) in jobs.iter().enumerate() {
        let (d, attempts) = f.b.webhooks.get_delivery(&f.tenant, &job.id).await.unwrap().unwrap();
        let want = [DeliveryStatus::Succeeded, DeliveryStatus::Pending, DeliveryStatus::Dead][n % 3];
        assert_eq!((d.status, d.attempts), (want, 1), "job {n}");
        assert_eq!(attempts.len(), 1, "job {n}: one attempt recorded");
        assert_eq!(attempts[0].status_code, Some([200, 503, 400][n % 3]), "job {n}");
    }
    assert_eq!(f.b.webhooks.dead_deliveries().await.unwrap(), 10);
    // Each failure event is stored with the message whose event died.
    let mut failed_events = 0;
    let messages =
        f.b.store.list_messages(&f.tenant, &MessageFilter { limit: 100, ..Default::default() }).await.unwrap();
    for m in &messages {
        let history = f.b.store.message_history(&f.tenant, &m.id).await.unwrap();
        failed_events += history.iter().filter(|e| e.event_type == EventType::WebhookDeliveryFailed).count();
    }
    assert_eq!(failed_events, 10, "one webhook.delivery_failed per dead delivery");
}

/// Endpoints filtered by instance and by message status get only the
/// deliveries they asked for; `update_endpoint` sets and clears the instance.
#[tokio::test]
async fn endpoints_filtered_by_instance_and_status_get_only_those_events() {
    use zapgate_domain::webhook::WebhookFormat;
    let f = fixture().await;
    let other = InstanceId::generate();
    f.b.store
        .create_instance(NewInstance {
            id: other.clone(),
            tenant_id: f.tenant.clone(),
            name: "other".into(),
            provider: "sandbox".into(),
            phone_number_id: format!("{}", rand_digits()),
            waba_id: "1".into(),
            phone_number: None,
            rate_per_sec: 80,
            burst: 80,
            provider_config: serde_json::json!({}),
        })
        .await
        .unwrap();
    let endpoint = |instance_id: Option<InstanceId>, statuses: Vec<String>, format| NewEndpoint {
        instance_id,
        statuses,
        format,
        ..endpoint(&f)
    };
    let hooks = &f.b.webhooks;
    let mine =
        hooks.create_endpoint(endpoint(Some(f.instance.clone()), vec![], WebhookFormat::Standard)).await.unwrap();
    assert_eq!((mine.instance_id.as_ref(), mine.statuses.is_empty()), (Some(&f.instance), true));
    let failures = hooks.create_endpoint(endpoint(None, vec!["failed".into()], WebhookFormat::Chatwoot)).await.unwrap();
    assert_eq!((failures.instance_id.as_ref(), failures.statuses.as_slice()), (None, &["failed".to_owned()][..]));
    let listed = hooks.get_endpoint(&f.tenant, &failures.id).await.unwrap().unwrap();
    assert_eq!(listed.statuses, ["failed"], "the filters are stored");

    // Ours: queued, sending, sent; then queued, sending, failed.
    let ok = accept(&f, "+5511900000001", Priority::Normal).await;
    let bad = accept(&f, "+5511900000002", Priority::Normal).await;
    assert_eq!(claim(&f, 10).await.len(), 2);
    sent(&f, &ok, "p-ok").await;
    let failed = SendOutcome {
        message_id: bad.clone(),
        result: SendResult::Failed { code: "131026".into(), message: "undeliverable".into() },
        retry_limit: 5,
        now: Timestamp::now(),
    };
    assert_eq!(f.b.store.record_outcome(failed).await.unwrap(), OutcomeApplied::Done(MessageStatus::Failed));
    // The other instance's: queued.
    let theirs = AcceptMessage {
        campaign_id: None,
        id: MessageId::generate(),
        tenant_id: f.tenant.clone(),
        request: SendRequest { instance_id: other.clone(), ..request(&f, "+5511900000003", "x", Priority::Normal) },
        idempotency: None,
        now: Timestamp::now(),
    };
    let Accepted::New { id: theirs, .. } = f.b.store.accept(theirs).await.unwrap() else { panic!("not accepted") };

    let now = Timestamp::now();
    while hooks.fan_out(100, now).await.unwrap() > 0 {}
    let jobs = hooks.claim_deliveries(now, 100, 100, 60_000).await.unwrap();
    let of = |e: &EndpointId| jobs.iter().filter(|j| &j.endpoint_id == e).collect::<Vec<_>>();
    let to_mine = of(&mine.id);
    assert_eq!(to_mine.len(), 6, "every status of its instance's two messages: {to_mine:#?}");
    assert!(to_mine.iter().all(|j| j.event.instance_id == f.instance && j.event.message_id.as_ref() != Some(&theirs)));
    assert!(to_mine.iter().all(|j| j.format == WebhookFormat::Standard));
    let to_failures = of(&failures.id);
    assert_eq!(to_failures.len(), 1, "only the failed status: {to_failures:#?}");
    assert_eq!(
        (to_failures[0].event.message_id.as_ref(), to_failures[0].event.status),
        (Some(&bad), Some(MessageStatus::Failed))
    );
    assert_eq!(to_failures[0].format, WebhookFormat::Chatwoot, "the job carries its endpoint's format");

    // The instance filter is changed, kept and cleared.
    let change = |instance_id| EndpointChange { instance_id, ..EndpointChange::default() };
    let moved = hooks.update_endpoint(&f.tenant, &mine.id, change(Some(Some(other.clone())))).await.unwrap().unwrap();
    assert_eq!(moved.instance_id.as_ref(), Some(&other));
    let kept = hooks
        .update_endpoint(&f.tenant, &mine.id, EndpointChange { enabled: Some(true), ..EndpointChange::default() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.instance_id.as_ref(), Some(&other), "left alone when not changed");
    let cleared = hooks.update_endpoint(&f.tenant, &mine.id, change(Some(None))).await.unwrap().unwrap();
    assert_eq!(cleared.instance_id, None);
    let opened = hooks
        .update_endpoint(
            &f.tenant,
            &failures.id,
            EndpointChange { statuses: Some(vec![]), ..EndpointChange::default() },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(opened.statuses.is_empty());
    let stored = hooks.get_endpoint(&f.tenant, &mine.id).await.unwrap().unwrap();
    assert_eq!(stored.instance_id, None, "cleared in the store");
}

fn new_integration(f: &Fixture) -> NewIntegration {
    NewIntegration {
        id: IntegrationId::generate(),
        tenant_id: f.tenant.clone(),
        instance_id: f.instance.clone(),
        base_url: "https://chatwoot.example.com".into(),
        account_id: 3,
        inbox_id: 7,
        api_token: "cw-token".into(),
        webhook_secret: Some("cw-secret".into()),
    }
}

fn chatwoot_job(f: &Fixture, integration: &IntegrationId, cw_id: &str, now: Timestamp) -> NewChatwootJob {
    NewChatwootJob {
        integration_id: integration.clone(),
        chatwoot_message_id: cw_id.into(),
        tenant_id: f.tenant.clone(),
        payload: serde_json::json!({ "to": "+5511900000001", "text": cw_id }),
        now,
    }
}

#[tokio::test]
async fn chatwoot_integrations_are_tenant_scoped_updated_and_soft_deleted() {
    let f = fixture().await;
    let cw = &f.b.chatwoot;
    let now = Timestamp::now();
    let created = cw.create_integration(new_integration(&f), now).await.unwrap();
    assert_eq!((created.account_id, created.inbox_id, created.enabled), (3, 7, true));
    assert_eq!((created.api_token.as_str(), created.webhook_secret.as_deref()), ("cw-token", Some("cw-secret")));
    let id = created.id.clone();

    let other = TenantId::generate();
    assert!(cw.get_integration(&other, &id).await.unwrap().is_none(), "another tenant cannot see it");
    assert!(cw.list_integrations(&other).await.unwrap().is_empty());
    assert!(cw.update_integration(&other, &id, IntegrationChange::default(), now).await.unwrap().is_none());
    assert!(!cw.delete_integration(&other, &id, now).await.unwrap(), "nor delete it");
    assert_eq!(cw.list_integrations(&f.tenant).await.unwrap().len(), 1);
    assert_eq!(cw.get_integration(&f.tenant, &id).await.unwrap().unwrap().base_url, "https://chatwoot.example.com");
    assert!(cw.integration(&id).await.unwrap().is_some(), "found by id alone (webhook ingest)");
    assert_eq!(cw.integrations_of_instance(&f.instance).await.unwrap().len(), 1);

    let later = now.plus_millis(1_000);
    let change = IntegrationChange {
        base_url: Some("https://cw2.example.com".into()),
        inbox_id: Some(9),
        webhook_secret: Some(None),
        enabled: Some(false),
        ..Default::default()
    };
    let updated = cw.update_integration(&f.tenant, &id, change, later).await.unwrap().unwrap();
    assert_eq!((updated.base_url.as_str(), updated.account_id, updated.inbox_id), ("https://cw2.example.com", 3, 9));
    assert_eq!((updated.webhook_secret, updated.enabled, updated.api_token.as_str()), (None, false, "cw-token"));
    assert_eq!((updated.created_at, updated.updated_at), (created.created_at, later));
    assert!(cw.integrations_of_instance(&f.instance).await.unwrap().is_empty(), "disabled ones get no inbound");
    assert!(cw.integration(&id).await.unwrap().is_some(), "a disabled one is still found by id");

    let change =
        IntegrationChange { webhook_secret: Some(Some("s2".into())), enabled: Some(true), ..Default::default() };
    let updated = cw.update_integration(&f.tenant, &id, change, later).await.unwrap().unwrap();
    assert_eq!((updated.webhook_secret.as_deref(), updated.enabled), (Some("s2"), true));
    let kept = cw.update_integration(&f.tenant, &id, IntegrationChange::default(), later).await.unwrap().unwrap();
    assert_eq!((kept.webhook_secret.as_deref(), kept.inbox_id), (Some("s2"), 9), "None keeps every field");

    assert!(cw.delete_integration(&f.tenant, &id, later).await.unwrap());
    assert!(!cw.delete_integration(&f.tenant, &id, later).await.unwrap(), "deleted once");
    assert!(cw.integration(&id).await.unwrap().is_none());
    assert!(cw.get_integration(&f.tenant, &id).await.unwrap().is_none());
    assert!(cw.list_integrations(&f.tenant).await.unwrap().is_empty());
    assert!(cw.integrations_of_instance(&f.instance).await.unwrap().is_empty());
    assert!(cw.update_integration(&f.tenant, &id, IntegrationChange::default(), later).await.unwrap().is_none());
}

#[tokio::test]
async fn chatwoot_jobs_are_made_once_per_key_leased_and_finished() {
    let f = fixture().await;
    let cw = &f.b.chatwoot;
    let now = Timestamp::now();
    let i = cw.create_integration(new_integration(&f), now).await.unwrap().id;
    assert!(cw.enqueue_chatwoot_job(chatwoot_job(&f, &i, "101", now)).await.unwrap(), "new");
    assert!(!cw.enqueue_chatwoot_job(chatwoot_job(&f, &i, "101", now)).await.unwrap(), "a re-delivered webhook");
    assert!(cw.enqueue_chatwoot_job(chatwoot_job(&f, &i, "102", now.plus_millis(1))).await.unwrap());

    let soon = now.plus_millis(1);
    let first = cw.claim_chatwoot_jobs(soon, 1, 30_000).await.unwrap();
    assert_eq!(first.len(), 1);
    let job = &first[0];
    assert_eq!((job.chatwoot_message_id.as_str(), job.status, job.attempts), ("101", ChatwootJobStatus::Pending, 0));
    assert_eq!((&job.integration_id, &job.tenant_id), (&i, &f.tenant));
    assert_eq!(job.payload["text"], "101");
    let second = cw.claim_chatwoot_jobs(soon, 10, 30_000).await.unwrap();
    assert_eq!(second.iter().map(|j| j.chatwoot_message_id.as_str()).collect::<Vec<_>>(), ["102"]);
    assert!(cw.claim_chatwoot_jobs(soon, 10, 30_000).await.unwrap().is_empty(), "both leased");
    assert!(cw.claim_chatwoot_jobs(soon.plus_millis(29_999), 10, 30_000).await.unwrap().is_empty());
    let expired = cw.claim_chatwoot_jobs(soon.plus_millis(30_000), 10, 30_000).await.unwrap();
    assert_eq!(expired.len(), 2, "an expired lease is claimable again");

    let message = MessageId::generate();
    let done_at = soon.plus_millis(31_000);
    cw.finish_chatwoot_job(&i, "101", ChatwootJobOutcome::Done { message_id: message.clone() }, done_at).await.unwrap();
    let done = cw.get_chatwoot_job(&i, "101").await.unwrap().unwrap();
    assert_eq!((done.status, done.message_id.as_ref(), done.attempts), (ChatwootJobStatus::Done, Some(&message), 0));
    assert_eq!(done.updated_at, done_at);
    let found = cw.chatwoot_job_of_message(&message).await.unwrap().unwrap();
    assert_eq!(found.chatwoot_message_id, "101");
    assert!(cw.chatwoot_job_of_message(&MessageId::generate()).await.unwrap().is_none());
    assert!(!cw.enqueue_chatwoot_job(chatwoot_job(&f, &i, "101", done_at)).await.unwrap(), "a finished key stays");
    let far = done_at.plus_millis(3_600_000);
    assert_eq!(cw.claim_chatwoot_jobs(far, 10, 30_000).await.unwrap().len(), 1, "only 102: done is never claimed");
    assert!(cw.get_chatwoot_job(&i, "999").await.unwrap().is_none());
}

#[tokio::test]
async fn a_chatwoot_retry_is_due_at_its_time_and_failure_is_final() {
    let f = fixture().await;
    let cw = &f.b.chatwoot;
    let now = Timestamp::now();
    let i = cw.create_integration(new_integration(&f), now).await.unwrap().id;
    cw.enqueue_chatwoot_job(chatwoot_job(&f, &i, "7", now)).await.unwrap();
    assert_eq!(cw.claim_chatwoot_jobs(now, 10, 60_000).await.unwrap().len(), 1);

    let at = now.plus_millis(5_000);
    let retry = ChatwootJobOutcome::Retry { at, error: "chatwoot 502".into() };
    cw.finish_chatwoot_job(&i, "7", retry, now.plus_millis(100)).await.unwrap();
    let waiting = cw.get_chatwoot_job(&i, "7").await.unwrap().unwrap();
    assert_eq!((waiting.status, waiting.attempts), (ChatwootJobStatus::Pending, 1));
    assert_eq!(waiting.error.as_deref(), Some("chatwoot 502"));
    assert!(cw.claim_chatwoot_jobs(at.plus_millis(-1), 10, 60_000).await.unwrap().is_empty(), "not before `at`");
    let again = cw.claim_chatwoot_jobs(at, 10, 60_000).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1), "due at `at`, not at the old lease's end");

    let failed = ChatwootJobOutcome::Failed { error: "no such chat".into() };
    cw.finish_chatwoot_job(&i, "7", failed, at).await.unwrap();
    let job = cw.get_chatwoot_job(&i, "7").await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts, job.error.as_deref()), (ChatwootJobStatus::Failed, 2, Some("no such chat")));
    assert_eq!(job.message_id, None);
    // A late outcome (an expired lease's worker) leaves a finished job alone.
    let late = ChatwootJobOutcome::Done { message_id: MessageId::generate() };
    cw.finish_chatwoot_job(&i, "7", late, at.plus_millis(1)).await.unwrap();
    assert_eq!(cw.get_chatwoot_job(&i, "7").await.unwrap().unwrap().status, ChatwootJobStatus::Failed);
    assert!(cw.claim_chatwoot_jobs(at.plus_millis(3_600_000), 10, 60_000).await.unwrap().is_empty());
}

#[tokio::test]
async fn only_old_finished_chatwoot_jobs_are_purged() {
    let f = fixture().await;
    let cw = &f.b.chatwoot;
    let now = Timestamp::now();
    let i = cw.create_integration(new_integration(&f), now).await.unwrap().id;
    for key in ["old-done", "old-failed", "new-done", "pending"] {
        cw.enqueue_chatwoot_job(chatwoot_job(&f, &i, key, now)).await.unwrap();
    }
    let done = || ChatwootJobOutcome::Done { message_id: MessageId::generate() };
    cw.finish_chatwoot_job(&i, "old-done", done(), now).await.unwrap();
    cw.finish_chatwoot_job(&i, "old-failed", ChatwootJobOutcome::Failed { error: "x".into() }, now).await.unwrap();
    cw.finish_chatwoot_job(&i, "new-done", done(), now.plus_millis(10_000)).await.unwrap();

    assert_eq!(cw.purge_chatwoot_jobs(now, 100).await.unwrap(), 0, "strictly before");
    let cut = now.plus_millis(5_000);
    assert_eq!(cw.purge_chatwoot_jobs(cut, 1).await.unwrap(), 1, "up to the limit");
    assert_eq!(cw.purge_chatwoot_jobs(cut, 100).await.unwrap(), 1);
    for (key, kept) in [("old-done", false), ("old-failed", false), ("new-done", true), ("pending", true)] {
        assert_eq!(cw.get_chatwoot_job(&i, key).await.unwrap().is_some(), kept, "{key}");
    }
    let much_later = now.plus_millis(86_400_000);
    assert_eq!(cw.purge_chatwoot_jobs(much_later, 100).await.unwrap(), 1, "a pending job is never purged");
    assert!(cw.get_chatwoot_job(&i, "pending").await.unwrap().is_some());
}

#[tokio::test]
async fn concurrent_chatwoot_claims_hand_each_job_out_once() {
    let f = fixture().await;
    // On PostgreSQL the second claimer is another process; SQLite has one.
    let other = if f._db.distributed() { f._db.open().await } else { f.b.clone() };
    let now = Timestamp::now();
    let i = f.b.chatwoot.create_integration(new_integration(&f), now).await.unwrap().id;
    for n in 0..150 {
        f.b.chatwoot.enqueue_chatwoot_job(chatwoot_job(&f, &i, &n.to_string(), now)).await.unwrap();
    }
    let round = |b: Backends| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let jobs = b.chatwoot.claim_chatwoot_jobs(now, 7, 60_000).await.unwrap();
                if jobs.is_empty() {
                    return got;
                }
                got.extend(jobs.into_iter().map(|j| j.chatwoot_message_id));
            }
        })
    };
    let (a, b) = (round(f.b.clone()), round(other));
    let mut all: Vec<_> = a.await.unwrap().into_iter().chain(b.await.unwrap()).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (150, 150), "every job claimed exactly once");
}

#[tokio::test]
async fn chatwoot_contacts_are_saved_replaced_and_read_per_integration() {
    let f = fixture().await;
    let cw = &f.b.chatwoot;
    let now = Timestamp::now();
    let i = cw.create_integration(new_integration(&f), now).await.unwrap().id;
    let j = cw.create_integration(new_integration(&f), now).await.unwrap().id;
    let chat = "5511900000001";
    assert!(cw.chatwoot_contact(&i, chat).await.unwrap().is_none());
    let first = ChatwootContact { chat: chat.into(), contact_id: 11, source_id: "src-1".into(), conversation_id: 21 };
    cw.save_chatwoot_contact(&i, first.clone()).await.unwrap();
    assert_eq!(cw.chatwoot_contact(&i, chat).await.unwrap(), Some(first.clone()));
    let moved = ChatwootContact { conversation_id: 22, source_id: "src-2".into(), ..first };
    cw.save_chatwoot_contact(&i, moved.clone()).await.unwrap();
    assert_eq!(cw.chatwoot_contact(&i, chat).await.unwrap(), Some(moved), "replaced, not added");
    assert!(cw.chatwoot_contact(&j, chat).await.unwrap().is_none(), "another integration's chat is its own");
    assert!(cw.chatwoot_contact(&i, "5511900000002").await.unwrap().is_none());
    // Moved to another Chatwoot: its contacts are forgotten, another integration's kept.
    let other = ChatwootContact { chat: chat.into(), contact_id: 31, source_id: "src-3".into(), conversation_id: 41 };
    cw.save_chatwoot_contact(&j, other.clone()).await.unwrap();
    assert_eq!(cw.forget_chatwoot_contacts(&i).await.unwrap(), 1);
    assert!(cw.chatwoot_contact(&i, chat).await.unwrap().is_none());
    assert_eq!(cw.chatwoot_contact(&j, chat).await.unwrap(), Some(other));
}

async fn schedule_fixture(f: &Fixture, now: Timestamp) -> ScheduleRecord {
    let s = &f.b.schedules;
    let audience = AudienceRecord {
        id: AudienceId::generate(),
        tenant_id: f.tenant.clone(),
        name: "a".into(),
        members: 0,
        created_at: now,
        updated_at: now,
    };
    let audience = s.create_audience(audience).await.unwrap();
    let schedule = ScheduleRecord {
        id: ScheduleId::generate(),
        tenant_id: f.tenant.clone(),
        name: "s".into(),
        instance_id: f.instance.clone(),
        audience_id: audience.id,
        template_id: TemplateId::generate(),
        cron: "0 9 * * *".into(),
        time_zone: "UTC".into(),
        date_field: Some("due".into()),
        offsets_days: vec![-3, 0],
        priority: Priority::Normal,
        enabled: true,
        next_run_at: Some(now),
        last_run_at: None,
        created_at: now,
        updated_at: now,
    };
    s.create_schedule(schedule).await.unwrap()
}

#[tokio::test]
async fn audience_members_are_upserted_listed_in_order_and_removed() {
    let f = fixture().await;
    let now = Timestamp::now();
    let sch = schedule_fixture(&f, now).await;
    let s = &f.b.schedules;
    let member = |to: &str, name: &str| AudienceMember {
        to: ChatId::parse(to).unwrap(),
        variables: [("name".to_owned(), name.to_owned())].into(),
    };
    let first = vec![member("+5511900000003", "c"), member("+5511900000001", "a"), member("+5511900000002", "b")];
    assert_eq!(s.upsert_members(&sch.audience_id, first, now).await.unwrap(), 3);
    s.upsert_members(&sch.audience_id, vec![member("+5511900000002", "B")], now).await.unwrap();
    let page = s.list_members(&sch.audience_id, None, 2).await.unwrap();
    assert_eq!(page, [member("+5511900000001", "a"), member("+5511900000002", "B")]);
    let rest = s.list_members(&sch.audience_id, Some(page[1].to.to_string()), 2).await.unwrap();
    assert_eq!(rest, [member("+5511900000003", "c")]);
    assert_eq!(s.get_audience(&f.tenant, &sch.audience_id).await.unwrap().unwrap().members, 3);
    assert!(s.delete_member(&sch.audience_id, &ChatId::parse("+5511900000003").unwrap()).await.unwrap());
    assert_eq!(s.get_audience(&f.tenant, &sch.audience_id).await.unwrap().unwrap().members, 2);
    // In use by the schedule: not deleted; once the schedule is gone, deleted.
    assert_eq!(s.delete_audience(&f.tenant, &sch.audience_id).await.unwrap(), AudienceDeletion::InUse);
    assert!(s.delete_schedule(&f.tenant, &sch.id).await.unwrap());
    assert_eq!(s.delete_audience(&TenantId::generate(), &sch.audience_id).await.unwrap(), AudienceDeletion::NotFound);
    assert_eq!(s.delete_audience(&f.tenant, &sch.audience_id).await.unwrap(), AudienceDeletion::Deleted);
    assert!(s.list_members(&sch.audience_id, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_due_schedule_starts_one_run_however_many_schedulers_try() {
    let f = fixture().await;
    let other = if f._db.distributed() { f._db.open().await } else { f.b.clone() };
    let now = Timestamp::now();
    let sch = schedule_fixture(&f, now).await;
    let due = f.b.schedules.due_schedules(now, 10).await.unwrap();
    assert_eq!(due.iter().map(|s| &s.id).collect::<Vec<_>>(), [&sch.id]);
    let next = now.plus_millis(86_400_000);
    let run = NewRun {
        schedule_id: sch.id.clone(),
        tenant_id: f.tenant.clone(),
        due: now,
        occurrence: now,
        next: Some(next),
        run_date: "2026-12-07".into(),
        missed: 2,
    };
    let tries: Vec<_> = (0..6)
        .map(|n| {
            let (b, run) = (if n % 2 == 0 { f.b.clone() } else { other.clone() }, run.clone());
            tokio::spawn(async move { b.schedules.start_run(run, now).await.unwrap() })
        })
        .collect();
    let mut started = 0;
    for t in tries {
        started += usize::from(t.await.unwrap());
    }
    assert_eq!(started, 1, "one run per occurrence");
    let sch = f.b.schedules.get_schedule(&f.tenant, &sch.id).await.unwrap().unwrap();
    assert_eq!((sch.next_run_at, sch.last_run_at), (Some(next), Some(now)));
    assert!(f.b.schedules.due_schedules(now, 10).await.unwrap().is_empty());

    // Leased to one scheduler at a time; progress moves the cursor and adds up.
    let claimed = f.b.schedules.claim_run("a", now, 60_000).await.unwrap().unwrap();
    assert_eq!((claimed.missed, claimed.cursor.clone()), (2, None));
    assert!(other.schedules.claim_run("b", now, 60_000).await.unwrap().is_none(), "leased");
    let chunk = |accepted, cursor: &str| RunProgress { cursor: Some(cursor.into()), accepted, ..Default::default() };
    let lease = now.plus_millis(60_000);
    assert!(f.b.schedules.record_run_progress(&sch.id, now, "a", chunk(5, "+551"), lease, now).await.unwrap());
    assert!(f.b.schedules.record_run_progress(&sch.id, now, "a", chunk(3, "+552"), lease, now).await.unwrap());
    // A scheduler that died: its lease runs out and another resumes at the cursor.
    let later = now.plus_millis(60_001);
    let resumed = other.schedules.claim_run("b", later, 60_000).await.unwrap().unwrap();
    assert_eq!((resumed.cursor.as_deref(), resumed.accepted), (Some("+552"), 8));
    // The one it was taken from is told to stop, and its chunk is not counted.
    assert!(!f.b.schedules.record_run_progress(&sch.id, now, "a", chunk(9, "+553"), lease, later).await.unwrap());
    let done = RunProgress { finished: Some(RunStatus::Done), ..Default::default() };
    assert!(other.schedules.record_run_progress(&sch.id, now, "b", done, later, later).await.unwrap());
    assert!(f.b.schedules.claim_run("a", later.plus_millis(120_000), 60_000).await.unwrap().is_none(), "done");
    // Finished runs are purged after their time, not before.
    assert_eq!(f.b.schedules.purge_runs(later).await.unwrap(), 0);
    let runs = f.b.schedules.list_runs(&sch.id, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].status, runs[0].accepted, runs[0].finished_at), (RunStatus::Done, 8, Some(later)));
    assert_eq!(f.b.schedules.purge_runs(later.plus_millis(1)).await.unwrap(), 1);
    assert!(f.b.schedules.list_runs(&sch.id, 10).await.unwrap().is_empty());
}

fn new_campaign(f: &Fixture, now: Timestamp) -> CampaignRecord {
    CampaignRecord {
        id: CampaignId::generate(),
        tenant_id: f.tenant.clone(),
        name: "c".into(),
        instance_id: f.instance.clone(),
        template_id: TemplateId::generate(),
        priority: Priority::Low,
        rate_per_second: None,
        start_at: None,
        state: CampaignState::Draft,
        total: 0,
        duplicates: 0,
        invalid: 0,
        released: 0,
        cursor: 0,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
    }
}

fn valid(to: &str) -> ImportRow {
    ImportRow::Valid(AudienceMember { to: ChatId::parse(to).unwrap(), variables: Default::default() })
}

#[tokio::test]
async fn campaign_rows_are_numbered_across_imports_deduplicated_and_rejected_with_reasons() {
    let f = fixture().await;
    let now = Timestamp::now();
    let c = f.b.campaigns.create_campaign(new_campaign(&f, now)).await.unwrap();
    let bad = |m: &str| ImportRow::Invalid { field: "to".into(), message: m.into() };
    let first = vec![valid("+5511900000001"), bad("x"), valid("+5511900000002"), valid("+5511900000001")];
    let counts = f.b.campaigns.import_rows(&c.id, first, now).await.unwrap();
    assert_eq!(counts, ImportCounts { added: 2, duplicates: 1, invalid: 1 });
    let second = vec![valid("+5511900000002"), valid("+5511900000003"), bad("y")];
    let counts = f.b.campaigns.import_rows(&c.id, second, now).await.unwrap();
    assert_eq!(counts, ImportCounts { added: 1, duplicates: 1, invalid: 1 });
    let rows: Vec<u64> = f.b.campaigns.next_recipients(&c.id, 0, 10).await.unwrap().iter().map(|r| r.0).collect();
    assert_eq!(rows, [1, 3, 6], "row numbers run on across imports");
    let rejects = f.b.campaigns.list_rejects(&c.id, 0, 10).await.unwrap();
    assert_eq!(rejects.iter().map(|r| (r.row, r.message.as_str())).collect::<Vec<_>>(), [(2, "x"), (7, "y")]);
    let got = f.b.campaigns.get_campaign(&f.tenant, &c.id).await.unwrap().unwrap();
    assert_eq!((got.total, got.duplicates, got.invalid), (3, 2, 2));
    // Only a draft takes rows; states move only from the named ones.
    let running = [CampaignState::Draft];
    let started = f.b.campaigns.set_campaign_state(&f.tenant, &c.id, &running, CampaignState::Running, now);
    let started = started.await.unwrap().unwrap();
    assert_eq!((started.state, started.started_at), (CampaignState::Running, Some(now)));
    assert!(matches!(
        f.b.campaigns.import_rows(&c.id, vec![valid("+5511900000009")], now).await,
        Err(StoreError::Conflict(_))
    ));
    let again =
        f.b.campaigns.set_campaign_state(&f.tenant, &c.id, &running, CampaignState::Running, now).await.unwrap();
    assert!(again.is_none());
    let stranger = TenantId::generate();
    let other =
        f.b.campaigns.set_campaign_state(&stranger, &c.id, &[CampaignState::Running], CampaignState::Paused, now);
    assert!(other.await.unwrap().is_none(), "another tenant's campaign");
}

#[tokio::test]
async fn a_campaign_is_released_by_one_leaseholder_whose_cursor_moves_by_compare_and_set() {
    let f = fixture().await;
    let other = if f._db.distributed() { f._db.open().await } else { f.b.clone() };
    let now = Timestamp::now();
    let c = f.b.campaigns.create_campaign(new_campaign(&f, now)).await.unwrap();
    let rows = (1..=5).map(|n| valid(&format!("+551190000000{n}"))).collect();
    f.b.campaigns.import_rows(&c.id, rows, now).await.unwrap();
    let draft = [CampaignState::Draft];
    f.b.campaigns.set_campaign_state(&f.tenant, &c.id, &draft, CampaignState::Running, now).await.unwrap().unwrap();
    let mine = f.b.campaigns.claim_campaigns("a", now, 10_000, 10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert!(other.campaigns.claim_campaigns("b", now, 10_000, 10).await.unwrap().is_empty(), "leased to a");
    assert_eq!(f.b.campaigns.claim_campaigns("a", now, 10_000, 10).await.unwrap().len(), 1, "a renews its lease");
    let advance = |b: &Backends, owner: &'static str, from, to| {
        let b = b.clone();
        let id = c.id.clone();
        async move {
            b.campaigns
                .advance_campaign(
                    &id,
                    owner,
                    CursorStep { from, to, released: to - from, now, lease_until: now.plus_millis(10_000) },
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(advance(&other, "b", 0, 2).await, None, "not the leaseholder");
    assert_eq!(advance(&f.b, "a", 0, 2).await, Some(CampaignState::Running));
    assert_eq!(advance(&f.b, "a", 0, 2).await, None, "the cursor moved already");
    // Paused meanwhile: what was accepted still counts, and the state says stop.
    let running = [CampaignState::Running];
    f.b.campaigns.set_campaign_state(&f.tenant, &c.id, &running, CampaignState::Paused, now).await.unwrap().unwrap();
    assert_eq!(advance(&f.b, "a", 2, 3).await, Some(CampaignState::Paused));
    assert!(f.b.campaigns.claim_campaigns("a", now, 10_000, 10).await.unwrap().is_empty(), "paused is not released");
    let got = f.b.campaigns.get_campaign(&f.tenant, &c.id).await.unwrap().unwrap();
    assert_eq!((got.released, got.cursor), (3, 3));
    // Resumed after a's lease ran out: b takes it.
    let paused = [CampaignState::Paused];
    f.b.campaigns.set_campaign_state(&f.tenant, &c.id, &paused, CampaignState::Running, now).await.unwrap().unwrap();
    let later = now.plus_millis(10_001);
    let taken = other.campaigns.claim_campaigns("b", later, 10_000, 10).await.unwrap();
    assert_eq!(taken.iter().map(|c| c.cursor).collect::<Vec<_>>(), [3]);
    let rest: Vec<u64> = f.b.campaigns.next_recipients(&c.id, 3, 10).await.unwrap().iter().map(|r| r.0).collect();
    assert_eq!(rest, [4, 5]);
}
