"""Config: sources, precedence and a clear error for every bad key or value."""

import pytest

from relay.config import Config, ConfigError, from_mapping, load


def write(tmp_path, text):
    p = tmp_path / "relay.toml"
    p.write_text(text)
    return str(p)


def test_defaults_need_a_secret_or_anonymous():
    with pytest.raises(ConfigError) as e:
        load(environ={})
    assert "token_hmac_secret: required unless allow_anonymous_connect = true" in e.value.errors
    assert load(environ={"RELAY_ALLOW_ANONYMOUS_CONNECT": "true"}).allow_anonymous_connect is True


def test_precedence_file_env_flags(tmp_path):
    path = write(tmp_path, 'token_hmac_secret = "s"\nws_port = 9000\ntcp_port = 9001\n'
                           '[namespaces.chat]\nhistory_size = 5\npresence = true\n')
    cfg = load(path, environ={"RELAY_TCP_PORT": "9100", "RELAY_NAMESPACES__CHAT__HISTORY_SIZE": "50"},
               overrides={"ws_port": 9200, "api_port": None})
    assert (cfg.ws_port, cfg.tcp_port, cfg.api_port) == (9200, 9100, Config.api_port)
    assert cfg.namespaces["chat"].history_size == 50 and cfg.namespaces["chat"].presence is True
    assert cfg.channel_options("chat:x").history_size == 50
    assert cfg.channel_options("lobby") is cfg.channel
    assert cfg.channel_options("nope:x") is None


def test_every_bad_key_and_value_reported(tmp_path):
    path = write(tmp_path, 'token_hmac_secret = "s"\nws_port = "eighty"\nbogus = 1\nmax_channel_length = 0\n'
                           'log_level = "LOUD"\n[channel]\npresence = "yes"\nwhat = 1\n'
                           '[namespaces."bad ns"]\nhistory_size = -1\n[namespaces.ok]\nforce_recovery = true\n')
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    errs = e.value.errors
    assert "ws_port: expected an integer, got 'eighty'" in errs
    assert "bogus: unknown key" in errs
    assert "channel.presence: expected true or false, got 'yes'" in errs
    assert "channel.what: unknown key" in errs
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, 'token_hmac_secret = "s"\nmax_channel_length = 0\nlog_level = "LOUD"\n'
                             '[namespaces."bad ns"]\nhistory_size = -1\n[namespaces.ok]\nforce_recovery = true\n'),
             environ={})
    errs = e.value.errors
    assert "max_channel_length: must be > 0" in errs
    assert any(x.startswith("log_level:") for x in errs)
    assert any(x.startswith("namespaces.bad ns:") for x in errs)
    assert "namespaces.bad ns.history_size: must be >= 0" in errs
    assert "namespaces.ok.force_recovery: needs history_size > 0" in errs


def test_bad_env_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(environ={"RELAY_TOKEN_HMAC_SECRET": "s", "RELAY_PING_INTERVAL": "soon", "RELAY_NOPE": "1"})
    assert set(e.value.errors) == {"ping_interval: expected a number, got 'soon'", "nope: unknown key"}
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "missing.toml"), environ={})
    assert "cannot read" in e.value.errors[0]
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "ws_port = = 1"), environ={})
    assert "not valid TOML" in e.value.errors[0]


def test_build_switches_are_not_config_keys():
    cfg = load(environ={"RELAY_TOKEN_HMAC_SECRET": "s", "RELAY_PUREPYTHON": "1", "RELAY_EXPECT_COMPILED": "1"})
    assert cfg.token_hmac_secret == "s"


def test_token_algorithm_config_is_checked():
    with pytest.raises(ConfigError) as e:
        load(environ={"RELAY_TOKEN_ALGORITHMS": "RS256,none", "RELAY_TOKEN_HMAC_SECRET": "s"})
    assert "token_algorithms: 'none' is not one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, ES512" \
        in e.value.errors
    assert "token_algorithms: RS* tokens need token_rsa_public_key or token_jwks_file" in e.value.errors


def test_access_modes_are_checked_and_old_keys_named():
    with pytest.raises(ConfigError) as e:
        from_mapping({"namespaces": {"chat": {"allow_publish": True}}})
    assert "namespaces.chat.allow_publish: unknown key; write publish_access = 'subscribers'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        from_mapping({"channel": {"publish_access": "everyone", "subscribe_access": "none"}})
    assert "channel.publish_access: 'everyone' is not one of none, token, subscribers" in str(e.value)
    assert "channel.subscribe_access: 'none' is not one of token, authenticated, anonymous" in str(e.value)


def test_kubernetes_service_link_variables_are_not_config():
    env = {"RELAY_SERVICE_HOST": "10.0.0.7", "RELAY_SERVICE_PORT": "8000", "RELAY_SERVICE_PORT_WS": "8000",
           "RELAY_PORT": "tcp://10.0.0.7:8000", "RELAY_PORT_8000_TCP": "tcp://10.0.0.7:8000",
           "RELAY_PORT_8000_TCP_PROTO": "tcp", "RELAY_PORT_8000_TCP_PORT": "8000",
           "RELAY_PORT_8000_TCP_ADDR": "10.0.0.7", "RELAY_WS_PORT": "9000", "RELAY_TOKEN_HMAC_SECRET": "x" * 32}
    assert load(None, environ=env).ws_port == 9000
    with pytest.raises(ConfigError, match="portx: unknown key"):
        load(None, environ={**env, "RELAY_PORTX": "1"})


def test_proxy_table_file_and_env_and_every_bad_value(tmp_path):
    path = write(tmp_path, 'token_hmac_secret = "s"\n[proxy]\nconnect_endpoint = "http://b/connect"\n'
                           'rpc_routes = { "orders.*" = "http://b/orders" }\ncookies = ["session"]\n'
                           '[namespaces.chat]\nproxy_publish = true\n')
    with pytest.raises(ConfigError) as e:
        load(path, environ={})
    assert e.value.errors == ["namespaces.chat.proxy_publish: needs proxy.publish_endpoint"]
    cfg = load(path, environ={"RELAY_PROXY__PUBLISH_ENDPOINT": "https://b/publish", "RELAY_PROXY__TIMEOUT": "0.25"})
    px = cfg.proxy
    assert (px.connect_endpoint, px.publish_endpoint, px.timeout) == ("http://b/connect", "https://b/publish", 0.25)
    assert px.rpc_routes == {"orders.*": "http://b/orders"} and px.cookies == ["session"]
    bad = write(tmp_path, 'token_hmac_secret = "s"\n[proxy]\nsubscribe_endpoint = "ftp://x"\ntimeout = 0\n'
                          'max_in_flight = 0\nconnect_failure_code = 1000\nmax_response_size = 10\n'
                          'rpc_routes = { "x" = "nope" }\n')
    with pytest.raises(ConfigError) as e:
        load(bad, environ={})
    text = "\n".join(e.value.errors)
    for needle in ("proxy.subscribe_endpoint: an http:// or https:// URL",
                   "proxy.rpc_routes.x: an http:// or https:// URL", "proxy.timeout", "max_in_flight >= 1",
                   "proxy.connect_failure_code", "proxy.max_response_size"):
        assert needle in text, needle
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, 'token_hmac_secret = "s"\n[proxy]\nwho = 1\n'), environ={})
    assert e.value.errors == ["proxy.who: unknown key"]


def test_lane_limits_default_to_shares_of_the_cap_and_are_checked():
    base = {"allow_anonymous_connect": True}
    cfg = from_mapping({**base, "client_queue_max_size": 4000})
    assert cfg.lane_limits() == (1000, 2000)
    assert from_mapping({**base, "client_queue_bulk_limit": 10, "client_queue_update_limit": 20}).lane_limits() \
        == (10, 20)
    assert from_mapping({**base, "lanes": False, "client_queue_max_size": 4000}).lane_limits() == (4000, 4000)
    with pytest.raises(ConfigError) as e:
        from_mapping({**base, "client_queue_max_size": 4000, "client_queue_bulk_limit": 3000,
                      "client_queue_update_limit": 2000})
    assert ("client_queue_bulk_limit <= client_queue_update_limit <= client_queue_max_size (0: the default "
            "share), got 3000, 2000, 4000") in e.value.errors
    with pytest.raises(ConfigError) as e:
        from_mapping({**base, "namespaces": {"prices": {"lane": "urgent"}}})
    assert "namespaces.prices.lane: 'urgent' is not one of chat, update, bulk" in e.value.errors
    assert from_mapping({**base, "namespaces": {"prices": {"lane": "bulk"}}}).namespaces["prices"].lane == "bulk"


def test_backpressure_keys_are_checked():
    base = {"allow_anonymous_connect": True}
    cfg = from_mapping(base)
    assert (cfg.backpressure_queue_bytes, cfg.backpressure_memory_bytes, cfg.max_publishes_in_flight) \
        == (268435456, 0, 10000)
    with pytest.raises(ConfigError) as e:
        from_mapping({**base, "backpressure_queue_bytes": -1, "max_publishes_in_flight": -5,
                      "backpressure_retry_after": 0})
    assert "backpressure_queue_bytes: must be >= 0 (0: no limit)" in e.value.errors
    assert "max_publishes_in_flight: must be >= 0 (0: no limit)" in e.value.errors
    assert "backpressure_retry_after: must be in (0, 3600] seconds" in e.value.errors


def test_pacing_keys_are_checked():
    base = {"allow_anonymous_connect": True}
    cfg = from_mapping({**base, "namespaces": {"sale": {"pace_ms": 5000}}})
    assert cfg.namespaces["sale"].pace_ms == 5000 and cfg.pace_min_subscribers == 1000
    with pytest.raises(ConfigError) as e:
        from_mapping({**base, "pace_min_subscribers": -1, "namespaces": {"sale": {"pace_ms": 600001}}})
    assert "namespaces.sale.pace_ms: must be between 0 and 600000 (10 minutes)" in e.value.errors
    assert "pace_min_subscribers: must be >= 0" in e.value.errors
