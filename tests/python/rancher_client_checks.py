"""Rancher's official Python client (`rancher-client-python-3p`, unmodified) against corral.

Run by tests/api.rs as `python rancher_client_checks.py <base-url> <token> <scenario>`, with
REQUESTS_CA_BUNDLE naming corral's CA. Each scenario uses the client as Rancher's own integration
tests do; an assertion or an unexpected ApiError exits non-zero with the traceback. Prints one
`ok <check>` line per check passed.
"""

import sys

import rancher

BASE, TOKEN, SCENARIO = sys.argv[1], sys.argv[2], sys.argv[3]


def ok(what):
    print("ok", what, flush=True)


def api_error(call, status, code):
    """Runs `call`, which must raise an ApiError with `status` and `code`; returns the error."""
    try:
        call()
    except rancher.ApiError as e:
        assert e.error.status == status, (status, e.error)
        assert e.error.code == code, (code, e.error)
        assert e.error.type == "error", e.error
        return e.error
    raise AssertionError("expected %s %s" % (status, code))


def must_authenticate(call):
    """Runs `call`, which must be refused as Rancher refuses an unauthenticated request: 401 with
    the status as a string and no code."""
    try:
        call()
    except rancher.ApiError as e:
        assert e.error.status == "401", e.error
        assert e.error.message == "must authenticate", e.error
        assert not hasattr(e.error, "code"), e.error
        return
    raise AssertionError("expected 401 must authenticate")


def client(**kw):
    return rancher.Client(url=BASE + "/v3", **kw)


def discovery():
    c = client(token=TOKEN)
    assert c.valid()
    for kind in ("cluster", "clusterRegistrationToken", "setting", "token", "user",
                 "feature", "authConfig", "node"):
        assert kind in c.schema.types, kind
    for method in ("list_cluster", "create_cluster", "by_id_cluster", "update_by_id_cluster",
                   "list_setting", "create_token", "list_user"):
        assert hasattr(c, method), method
    assert c.schema.types["cluster"].links.collection == BASE + "/v3/clusters"
    ok("discovery")
    public = rancher.Client(url=BASE + "/v3-public")
    assert public.valid()
    providers = public.list_auth_provider()
    assert [p.id for p in providers.data] == ["local"], providers
    ok("public discovery")
    # No token: every type needs one, and the client says so with Rancher's error.
    must_authenticate(lambda: client())
    ok("discovery without a token")


def clusters():
    c = client(token=TOKEN)
    made = c.create_cluster(name="py-lab", description="from python")
    assert made.type == "cluster" and made.id.startswith("c-"), made
    assert made.name == "py-lab" and made.description == "from python", made
    assert made.state in ("pending", "active"), made
    ok("create")
    got = c.by_id_cluster(made.id)
    assert got.id == made.id and got.links.self == BASE + "/v3/clusters/" + made.id, got
    assert c.reload(made).name == "py-lab"
    ok("by_id")
    listed = c.list_cluster(name="py-lab")
    assert [x.id for x in listed.data] == [made.id], listed
    strict = client(token=TOKEN, strict=True)
    assert len(strict.list_cluster(name_ne="py-lab").data) == len(c.list_cluster().data) - 1
    ok("filters")
    changed = c.update(got, description="changed", labels={"env": "lab"})
    assert changed.description == "changed" and changed.labels.env == "lab", changed
    assert c.by_id_cluster(made.id).description == "changed"
    ok("update")
    kubeconfig = changed.generateKubeconfig()
    assert kubeconfig.type == "generateKubeConfigOutput", kubeconfig
    assert "/k8s/clusters/" + made.id in kubeconfig.config, kubeconfig.config
    ok("generateKubeconfig")
    registration = c.create_cluster_registration_token(clusterId=made.id)
    assert registration.clusterId == made.id and len(registration.token) >= 54, registration
    ok("registration token")
    api_error(lambda: c.create_cluster_registration_token(clusterId="c-nope"), 404, "NotFound")
    c.delete(changed)
    assert c.by_id_cluster(made.id) is None
    api_error(lambda: c.update_by_id_cluster(made.id, name="x"), 404, "NotFound")
    ok("delete")


def settings():
    c = client(token=TOKEN)
    version = c.by_id_setting("server-version")
    assert version.type == "setting" and version.value != "", version
    names = [s.name for s in c.list_setting().data]
    assert "server-url" in names and "cacerts" in names, names
    ok("list and get")
    made = c.create_setting(name="py-setting", value="one")
    assert made.value == "one" and made.default == "", made
    api_error(lambda: c.create_setting(name="py-setting", value="two"), 409, "AlreadyExists")
    changed = c.update(made, value="two")
    assert changed.value == "two" and c.by_id_setting("py-setting").value == "two"
    c.delete(changed)
    assert c.by_id_setting("py-setting") is None
    ok("create, update, delete")
    missing = api_error(lambda: c.create_setting(value="x"), 422, "MissingRequired")
    assert missing.fieldName == "name", missing
    cacerts = c.by_id_setting("cacerts")
    api_error(lambda: c.update(cacerts, value="x"), 405, "MethodNotAllow")
    ok("errors")


def tokens():
    c = client(token=TOKEN)
    key = c.create_token(description="py key")
    assert key.type == "token" and key.token.startswith(key.name + ":"), key
    access, secret = key.token.split(":", 1)
    as_key = client(access_key=access, secret_key=secret)
    me = as_key.list_user(me=True).data
    assert [u.username for u in me] == ["admin"], me
    ok("API key as access and secret key")
    listed = [t.id for t in c.list_token().data]
    assert key.id in listed, listed
    assert all(not getattr(t, "token", "") for t in c.list_token().data)
    ok("tokens listed without their secrets")
    c.delete(c.by_id_token(key.id))
    must_authenticate(lambda: as_key.list_user(me=True))
    ok("deleted key refused")


def password():
    """Changes the admin's password through the users collection's action, then logs in with the
    new one through the public client, and sets the old one back."""
    old, new = sys.argv[4], sys.argv[5]
    c = client(token=TOKEN)
    users = c.list_user()
    api_error(lambda: c.action(users, "changepassword", currentPassword="wrong",
                               newPassword=new), 422, "InvalidBodyContent")
    c.action(users, "changepassword", currentPassword=old, newPassword=new)
    ok("changepassword")
    public = rancher.Client(url=BASE + "/v3-public")
    local = [p for p in public.list_auth_provider().data if p.id == "local"][0]
    assert local.type == "localProvider", local
    api_error(lambda: local.login(username="admin", password=old, responseType="json"),
              401, "Unauthorized")
    token = local.login(username="admin", password=new, responseType="json", description="py")
    assert token.type == "token" and token.token.startswith("token-"), token
    again = client(token=token.token)
    assert [u.username for u in again.list_user(me=True).data] == ["admin"]
    ok("login with the new password")
    again.action(again.list_user(), "changepassword", currentPassword=new, newPassword=old)
    ok("changed back")


{"discovery": discovery, "clusters": clusters, "settings": settings, "tokens": tokens,
 "password": password}[SCENARIO]()
