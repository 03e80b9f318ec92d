//! The tables of `migrations/<backend>/`, as diesel sees them. Timestamps are UTC text of a
//! fixed width (`2026-11-22T14:04:35.000000Z`) and due dates `YYYY-MM-DD`, so text order is time
//! order on every backend.

diesel::table! {
    meta (id) {
        id -> Integer,
        last_index -> BigInt,
        last_term -> BigInt,
        next_product_id -> BigInt,
        next_user_id -> BigInt,
        next_task_id -> BigInt,
    }
}

diesel::table! {
    idempotency_keys (idem_key) {
        idem_key -> Text,
        log_index -> BigInt,
        outcome -> Text,
        fingerprint -> Nullable<Text>,
    }
}

diesel::table! {
    products (id) {
        id -> BigInt,
        title -> Text,
        price -> Double,
        currency -> Text,
        converted_price -> Nullable<Double>,
        converted_currency -> Nullable<Text>,
        availability -> Nullable<Text>,
        rating -> Nullable<Integer>,
        link -> Nullable<Text>,
        scraped_at -> Nullable<Text>,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        name -> Text,
        email -> Text,
        created_at -> Text,
    }
}

diesel::table! {
    tasks (id) {
        id -> BigInt,
        title -> Text,
        description -> Nullable<Text>,
        due_date -> Nullable<Text>,
        status -> Text,
        priority -> Text,
        assignee -> Nullable<BigInt>,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    apply_outcomes (log_index) {
        log_index -> BigInt,
        outcome -> Text,
    }
}

diesel::table! {
    accounts (name) {
        name -> Text,
        role -> Text,
        password_hash -> Text,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Text,
        account -> Text,
        expires_at -> Text,
        created_at -> Text,
    }
}

diesel::joinable!(tasks -> users (assignee));
diesel::allow_tables_to_appear_in_same_query!(
    meta,
    idempotency_keys,
    products,
    users,
    tasks,
    apply_outcomes,
    accounts,
    sessions
);
