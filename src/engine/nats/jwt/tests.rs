//! Tests of the JWT encoding: key roles, token layout, signatures, claims and creds files.
use super::*;

const IAT: i64 = 1_700_000_000;

fn fixed_key(role: Role, byte: u8) -> KeyPair {
    KeyPair::new_from_raw(role.key_type(), [byte; 32]).unwrap()
}

fn parts(jwt: &str) -> (String, serde_json::Value) {
    let (h, c, _) = split_jwt(jwt).unwrap();
    let header = String::from_utf8(decode_b64(h).unwrap()).unwrap();
    let claims = serde_json::from_slice(&decode_b64(c).unwrap()).unwrap();
    (header, claims)
}

fn claims_text(jwt: &str) -> String {
    let (_, c, _) = split_jwt(jwt).unwrap();
    String::from_utf8(decode_b64(c).unwrap()).unwrap()
}

#[test]
fn generated_keys_have_their_role_and_round_trip_through_seeds() {
    for (role, public_prefix, seed_prefix) in [
        (Role::Operator, "O", "SO"),
        (Role::Account, "A", "SA"),
        (Role::User, "U", "SU"),
    ] {
        let kp = generate_key(role);
        assert!(kp.public_key().starts_with(public_prefix));
        let s = seed(&kp).unwrap();
        assert!(s.starts_with(seed_prefix), "{s}");
        assert_eq!(
            key_from_seed(role, &s).unwrap().public_key(),
            kp.public_key()
        );
    }
    let account_seed = seed(&generate_key(Role::Account)).unwrap();
    assert!(matches!(
        key_from_seed(Role::User, &account_seed),
        Err(Error::WrongRole {
            expected: Role::User,
            ..
        })
    ));
    let public_only = KeyPair::from_public_key(&generate_key(Role::User).public_key()).unwrap();
    assert!(seed(&public_only).is_err());
}

#[test]
fn tokens_have_the_nats_header_and_verify_against_their_issuer() {
    let operator = generate_key(Role::Operator);
    let sys = generate_key(Role::Account);
    let jwt = operator_jwt(&operator, "op", &sys.public_key(), IAT).unwrap();
    let (header, claims) = parts(&jwt);
    assert_eq!(header, r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    assert!(!jwt.contains('='), "no padding: {jwt}");
    assert_eq!(decode_verified(&jwt).unwrap(), claims);

    // The signature covers `<header>.<claims>` with the issuer's key.
    let (h, c, s) = split_jwt(&jwt).unwrap();
    let sig = decode_b64(s).unwrap();
    operator
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .unwrap();
    assert!(sys.verify(format!("{h}.{c}").as_bytes(), &sig).is_err());

    // Any change to the claims breaks the signature.
    let mut tampered = claims.clone();
    tampered["name"] = "other".into();
    let forged = format!(
        "{h}.{}.{s}",
        BASE64URL_NOPAD.encode(tampered.to_string().as_bytes())
    );
    assert!(matches!(decode_verified(&forged), Err(Error::BadSignature)));
    assert!(matches!(decode_verified("a.b"), Err(Error::Malformed(_))));
}

#[test]
fn operator_claims_are_self_signed_and_name_the_system_account() {
    let operator = fixed_key(Role::Operator, 1);
    let sys = fixed_key(Role::Account, 2);
    let jwt = operator_jwt(&operator, "conveyor", &sys.public_key(), IAT).unwrap();
    let (_, claims) = parts(&jwt);
    assert_eq!(claims["iss"], operator.public_key());
    assert_eq!(claims["sub"], operator.public_key());
    assert_eq!(claims["iat"], IAT);
    assert_eq!(claims["name"], "conveyor");
    assert_eq!(
        claims["nats"],
        serde_json::json!({
            "system_account": sys.public_key(),
            "type": "operator",
            "version": 2,
        })
    );
    // Deterministic for fixed keys and issue time (ed25519 signatures are).
    assert_eq!(
        jwt,
        operator_jwt(&operator, "conveyor", &sys.public_key(), IAT).unwrap()
    );
}

#[test]
fn jti_is_base32_sha512_256_of_the_standard_claims() {
    let operator = fixed_key(Role::Operator, 1);
    let account = fixed_key(Role::Account, 3);
    let name = "a <&> b";
    let jwt = account_jwt(
        &operator,
        &account.public_key(),
        name,
        AccountLimits::default(),
        IAT,
    )
    .unwrap();
    let (_, claims) = parts(&jwt);
    // Go's encoding/json escapes <, > and & even inside strings.
    let standard = format!(
        r#"{{"iat":{IAT},"iss":"{}","name":"a \u003c\u0026\u003e b","sub":"{}"}}"#,
        operator.public_key(),
        account.public_key()
    );
    let expected = BASE32_NOPAD.encode(&Sha512_256::digest(standard.as_bytes()));
    assert_eq!(claims["jti"], expected);
    assert_eq!(expected.len(), 52);
    assert_eq!(claims["name"], name);
}

#[test]
fn account_claims_match_the_go_library_layout() {
    let operator = fixed_key(Role::Operator, 1);
    let account = fixed_key(Role::Account, 3);
    let with_js = account_jwt(
        &operator,
        &account.public_key(),
        "app",
        AccountLimits::with_unlimited_jetstream(),
        IAT,
    )
    .unwrap();
    let text = claims_text(&with_js);
    let nats = &text[text.find(r#""nats":"#).unwrap()..];
    assert_eq!(
        nats,
        r#""nats":{"limits":{"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1,"mem_storage":-1,"disk_storage":-1,"streams":-1,"consumer":-1},"default_permissions":{"pub":{},"sub":{}},"authorization":{},"type":"account","version":2}}"#
    );
    let (_, claims) = parts(&with_js);
    assert_eq!(claims["iss"], operator.public_key());
    assert_eq!(claims["sub"], account.public_key());
    assert!(text.starts_with(r#"{"jti":""#), "{text}");

    let without_js = account_jwt(
        &operator,
        &account.public_key(),
        "SYS",
        AccountLimits::without_jetstream(),
        IAT,
    )
    .unwrap();
    let limits = &parts(&without_js).1["nats"]["limits"];
    for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
        assert!(limits.get(key).is_none(), "{key} in {limits}");
    }
    assert_eq!(limits["conn"], -1);
}

#[test]
fn account_jwt_checks_keys_and_limits() {
    let operator = generate_key(Role::Operator);
    let account = generate_key(Role::Account);
    let user = generate_key(Role::User);
    let limits = AccountLimits::default();
    assert!(matches!(
        account_jwt(&account, &account.public_key(), "a", limits, IAT),
        Err(Error::WrongRole {
            expected: Role::Operator,
            ..
        })
    ));
    assert!(matches!(
        account_jwt(&operator, &user.public_key(), "a", limits, IAT),
        Err(Error::WrongRole {
            expected: Role::Account,
            ..
        })
    ));
    assert!(matches!(
        account_jwt(&operator, "not-a-key", "a", limits, IAT),
        Err(Error::Nkey(_))
    ));
    let disabled = AccountLimits {
        jetstream: Some(JetStreamLimits {
            mem_storage: 0,
            disk_storage: 0,
            ..JetStreamLimits::UNLIMITED
        }),
    };
    assert!(matches!(
        account_jwt(&operator, &account.public_key(), "a", disabled, IAT),
        Err(Error::InvalidLimits(_))
    ));
    let negative = AccountLimits {
        jetstream: Some(JetStreamLimits {
            streams: -5,
            ..JetStreamLimits::UNLIMITED
        }),
    };
    assert!(matches!(
        account_jwt(&operator, &account.public_key(), "a", negative, IAT),
        Err(Error::InvalidLimits(_))
    ));
    // Operator keys without a seed cannot sign.
    let public_only = KeyPair::from_public_key(&operator.public_key()).unwrap();
    assert!(matches!(
        account_jwt(&public_only, &account.public_key(), "a", limits, IAT),
        Err(Error::Nkey(_))
    ));
    assert!(matches!(
        operator_jwt(&operator, "op", &user.public_key(), IAT),
        Err(Error::WrongRole { .. })
    ));
}

#[test]
fn user_claims_carry_permissions_and_unlimited_limits() {
    let account = fixed_key(Role::Account, 3);
    let user = fixed_key(Role::User, 4);
    let all = user_jwt(
        &account,
        &user.public_key(),
        "u",
        &Permissions::default(),
        IAT,
    )
    .unwrap();
    let text = claims_text(&all);
    assert!(
        text.ends_with(
            r#""nats":{"pub":{},"sub":{},"subs":-1,"data":-1,"payload":-1,"type":"user","version":2}}"#
        ),
        "{text}"
    );
    let (_, claims) = parts(&all);
    assert_eq!(claims["iss"], account.public_key());
    assert_eq!(claims["sub"], user.public_key());

    let restricted = Permissions {
        publish_allow: vec!["orders.>".into()],
        subscribe_allow: vec!["_INBOX.>".into(), "orders.* workers".into()],
    };
    let jwt = user_jwt(&account, &user.public_key(), "u", &restricted, IAT).unwrap();
    let text = claims_text(&jwt);
    assert!(
        text.contains(
            r#""nats":{"pub":{"allow":["orders.\u003e"]},"sub":{"allow":["_INBOX.\u003e","orders.* workers"]},"subs":-1"#
        ),
        "{text}"
    );
    let (_, claims) = parts(&jwt);
    assert_eq!(
        claims["nats"]["pub"]["allow"],
        serde_json::json!(["orders.>"])
    );
}

#[test]
fn user_jwt_rejects_bad_subjects_and_wrong_keys() {
    let account = generate_key(Role::Account);
    let user = generate_key(Role::User);
    for (publish, subscribe) in [
        (vec!["orders.* q".to_string()], vec![]),
        (vec!["".to_string()], vec![]),
        (vec![], vec!["a..b".to_string()]),
        (vec![], vec![".a".to_string()]),
        (vec![], vec!["a b c".to_string()]),
    ] {
        let permissions = Permissions {
            publish_allow: publish,
            subscribe_allow: subscribe,
        };
        let result = user_jwt(&account, &user.public_key(), "u", &permissions, IAT);
        assert!(
            matches!(result, Err(Error::InvalidSubject { .. })),
            "{permissions:?}: {result:?}"
        );
    }
    let operator = generate_key(Role::Operator);
    assert!(matches!(
        user_jwt(
            &operator,
            &user.public_key(),
            "u",
            &Permissions::default(),
            IAT
        ),
        Err(Error::WrongRole {
            expected: Role::Account,
            ..
        })
    ));
    assert!(matches!(
        user_jwt(
            &account,
            &account.public_key(),
            "u",
            &Permissions::default(),
            IAT
        ),
        Err(Error::WrongRole {
            expected: Role::User,
            ..
        })
    ));
}

#[test]
fn creds_file_has_the_standard_layout() {
    let account = generate_key(Role::Account);
    let user = generate_key(Role::User);
    let jwt = user_jwt(
        &account,
        &user.public_key(),
        "u",
        &Permissions::default(),
        IAT,
    )
    .unwrap();
    let user_seed = seed(&user).unwrap();
    let creds = creds_file(&jwt, &user_seed).unwrap();
    let lines: Vec<&str> = creds.lines().collect();
    assert_eq!(lines[0], "-----BEGIN NATS USER JWT-----");
    assert_eq!(lines[1], jwt);
    assert_eq!(lines[2], "------END NATS USER JWT------");
    assert_eq!(lines[3], "");
    assert!(lines.contains(&"-----BEGIN USER NKEY SEED-----"));
    let at = lines
        .iter()
        .position(|l| *l == "-----BEGIN USER NKEY SEED-----")
        .unwrap();
    assert_eq!(lines[at + 1], user_seed);
    assert_eq!(lines[at + 2], "------END USER NKEY SEED------");
    assert!(creds.ends_with("*************************************************************\n"));

    // Only user seeds, and only JWT-shaped tokens.
    let account_seed = seed(&account).unwrap();
    assert!(matches!(
        creds_file(&jwt, &account_seed),
        Err(Error::WrongRole { .. })
    ));
    assert!(matches!(
        creds_file("not a jwt", &user_seed),
        Err(Error::Malformed(_))
    ));
}
