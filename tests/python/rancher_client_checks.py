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


def message_of(call, status, code, message):
    """`call` must fail with `status`, `code` and exactly `message`."""
    error = api_error(call, status, code)
    assert error.message == message, (message, error)
    return error


def has_link(obj, name):
    """Whether `obj` has link `name` (RestObject's getattr falls back to dict methods, such as
    `update`, so hasattr cannot tell)."""
    return name in obj.links.__dict__


def login(username, password):
    public = rancher.Client(url=BASE + "/v3-public")
    local = [p for p in public.list_auth_provider().data if p.id == "local"][0]
    return client(token=local.login(username=username, password=password,
                                     responseType="json").token)


def users():
    """The admin makes a standard user, binds it, and the user's own client sees what Rancher
    would show it (shared/spec/norman-api.md §6-8)."""
    c = client(token=TOKEN)
    admin = c.list_user(me=True).data[0]
    message_of(lambda: c.create_user(username="alice", password="short"), 422,
               "InvalidBodyContent", "Password must be at least 12 characters")
    message_of(lambda: c.create_user(username="alice-the-user", password="alice-the-user"), 422,
               "InvalidBodyContent", "Password cannot be the same as username")
    message_of(lambda: c.create_user(username="alice"), 500, "ServerError", "invalid password")
    message_of(lambda: c.create_user(password="alice-password-1"), 500, "ServerError",
               "invalid username")
    alice = c.create_user(username="alice", password="alice-password-1", name="Alice",
                          mustChangePassword=False)
    assert alice.type == "user" and alice.id.startswith("u-"), alice
    assert alice.principalIds == ["local://" + alice.id], alice
    assert not hasattr(alice, "password"), alice
    taken = message_of(lambda: c.create_user(username="alice", password="another-password-1"),
                       422, "NotUnique", "Username is already in use.")
    assert taken.fieldName == "username", taken
    assert c.list_global_role_binding(userId=alice.id).data == [], "no binding on create"
    ok("users created with Rancher's checks")

    message_of(lambda: c.create_global_role_binding(globalRoleId="user"), 422,
               "InvalidBodyContent", "must contain field [groupPrincipalId] OR field [userId]")
    message_of(lambda: c.create_global_role_binding(globalRoleId="nope", userId=alice.id), 404,
               "NotFound", 'globalroles.management.cattle.io "nope" not found')
    api_error(lambda: c.create_global_role_binding(userId=alice.id), 422, "MissingRequired")
    grb = c.create_global_role_binding(globalRoleId="user", userId=alice.id)
    assert grb.id.startswith("grb-") and grb.userId == alice.id, grb
    user_role = c.by_id_global_role("user")
    assert user_role.builtin and user_role.newUserDefault, user_role
    assert not has_link(user_role, "remove"), user_role.links
    message_of(lambda: c.delete(user_role), 403, "PermissionDenied",
               "cannot delete builtin global roles")
    changed = c.update(user_role, name="renamed", newUserDefault=False)
    assert changed.name == "User" and changed.newUserDefault is False, changed
    c.update(changed, newUserDefault=True)
    assert "admin" in [r.id for r in c.list_global_role().data]
    unchanged = c.update(grb, globalRoleId="admin")
    assert unchanged.globalRoleId == "user", "a binding's references do not change"
    custom = c.create_global_role(name="Settings readers", newUserDefault=False,
                                  rules=[{"apiGroups": ["management.cattle.io"],
                                          "resources": ["settings"], "verbs": ["get", "list"]}])
    assert custom.id.startswith("gr-") and custom.builtin is False, custom
    assert has_link(custom, "remove"), custom.links
    api_error(lambda: c.create_global_role(name="x"), 422, "MissingRequired")
    c.delete(custom)
    ok("global roles and bindings")

    owned = c.create_cluster(name="py-owned")
    member = c.create_cluster(name="py-member")
    hidden = c.create_cluster(name="py-hidden")
    message_of(lambda: c.create_cluster_role_template_binding(clusterId=owned.id,
                                                              userId=alice.id),
               422, "MissingRequired", "Request does not have a valid roleTemplateId")
    message_of(lambda: c.create_cluster_role_template_binding(
        clusterId=owned.id, roleTemplateId="project-owner", userId=alice.id), 422,
        "InvalidBodyContent", "Cannot reference context [project] from [cluster] context")
    message_of(lambda: c.create_cluster_role_template_binding(
        clusterId=owned.id, roleTemplateId="cluster-owner"), 422, "InvalidBodyContent",
        "must target a user [userId]/[userPrincipalId] OR a group [groupId]/[groupPrincipalId]")
    message_of(lambda: c.create_cluster_role_template_binding(
        clusterId=owned.id, roleTemplateId="nope", userId=alice.id), 500, "ServerError",
        'Error getting role template: roletemplates.management.cattle.io "nope" not found')
    crtb = c.create_cluster_role_template_binding(clusterId=owned.id,
                                                  roleTemplateId="cluster-owner",
                                                  userId=alice.id)
    assert crtb.id.startswith(owned.id + ":crtb-") and crtb.namespaceId == owned.id, crtb
    c.create_cluster_role_template_binding(clusterId=member.id, roleTemplateId="cluster-member",
                                           userId=alice.id)
    templates = {t.id: t for t in c.list_role_template().data}
    assert templates["cluster-owner"].context == "cluster", templates["cluster-owner"]
    assert templates["cluster-owner"].clusterCreatorDefault is True
    assert templates["project-owner"].context == "project"
    ok("cluster membership")

    a = login("alice", "alice-password-1")
    assert [u.id for u in a.list_user().data] == [alice.id], "a user sees itself only"
    assert a.list_user(me=True).data[0].username == "alice"
    message_of(lambda: a.by_id_user(admin.id), 403, "PermissionDenied", "can not get user ")
    names = [s.name for s in a.list_setting().data]
    assert "server-url" in names, names
    server_version = a.by_id_setting("server-version")
    assert not has_link(server_version, "update"), server_version.links
    message_of(lambda: a.update(server_version, value="x"), 403, "PermissionDenied",
               "can not update setting ")
    assert a.list_auth_config().data == [], "standard users see no auth configs"
    assert len(a.list_feature().data) > 0
    principals = a.list_principal().data
    assert [(p.id, p.me, p.loginName) for p in principals] == \
        [("local://" + alice.id, True, "alice")], principals
    found = a.action(a.list_principal(), "search", name="adm")
    assert [p.loginName for p in found.data] == ["admin"], found
    message_of(lambda: a.create_global_role(name="mine", newUserDefault=False), 403,
               "PermissionDenied", "can not create globalRole ")
    message_of(lambda: a.action(a.list_user(), "changepassword",
                                currentPassword="alice-password-1",
                                newPassword="short"), 422, "InvalidBodyContent",
               "Password must be at least 12 characters")
    ok("a standard user's view")

    seen = sorted(cl.id for cl in a.list_cluster().data)
    assert seen == sorted([owned.id, member.id]), (seen, owned.id, member.id)
    message_of(lambda: a.by_id_cluster(hidden.id), 403, "PermissionDenied", "can not get cluster ")
    a.update(a.by_id_cluster(owned.id), description="alice owns it")
    as_member = a.by_id_cluster(member.id)
    assert not has_link(as_member, "update"), as_member.links
    message_of(lambda: a.update_by_id_cluster(member.id, description="x"), 403,
               "PermissionDenied", "can not update cluster ")
    config = a.action(as_member, "generateKubeconfig").config
    assert member.id in config, config
    mine = a.create_cluster(name="py-alice")
    assert mine.id in [cl.id for cl in a.list_cluster().data], "its creator owns it"
    message_of(lambda: a.create_global_role_binding(globalRoleId="admin", userId=alice.id), 403,
               "PermissionDenied", "can not create globalRoleBinding ")
    # A user manager may bind what it holds itself, and no more (Rancher's webhook).
    manager = c.create_global_role_binding(globalRoleId="users-manage", userId=alice.id)
    escalation = api_error(lambda: a.create_global_role_binding(globalRoleId="admin",
                                                                userId=alice.id), 403, "Forbidden")
    assert escalation.message.startswith(
        'admission webhook "rancher.cattle.io.globalrolebindings.management.cattle.io" denied the '
        'request: ') and "not currently held" in escalation.message, escalation
    held = a.create_global_role_binding(globalRoleId="user-base", userId=alice.id)
    assert held.globalRoleId == "user-base", held
    c.delete(held)
    # Nor may it take over a user who holds more: the admin's password, its account.
    as_manager = a.by_id_user(admin.id)
    for takeover in (lambda: a.action(as_manager, "setpassword", newPassword="taken-over-12345"),
                     lambda: a.update(as_manager, enabled=False),
                     lambda: a.delete(as_manager)):
        refused = api_error(takeover, 403, "Forbidden")
        assert refused.message.startswith(
            'admission webhook "rancher.cattle.io.users.management.cattle.io" denied'), refused
    c.delete(manager)
    ok("clusters by membership")

    message_of(lambda: c.update(c.by_id_user(admin.id), enabled=False), 422, "InvalidAction",
               "You cannot deactivate yourself")
    message_of(lambda: c.delete(c.by_id_user(admin.id)), 422, "InvalidAction",
               "You cannot delete yourself")
    disabled = c.update(c.by_id_user(alice.id), enabled=False)
    assert disabled.enabled is False and disabled.state == "inactive", disabled
    must_authenticate(lambda: a.list_cluster())
    message_of(lambda: login("alice", "alice-password-1"), 403, "PermissionDenied",
               "Permission Denied")
    c.update(disabled, enabled=True)
    assert len(a.list_cluster().data) == 3, "enabled again, the same token works"
    reset = c.action(c.by_id_user(alice.id), "setpassword", newPassword="alice-password-2")
    assert reset.type == "user" and reset.mustChangePassword is False, reset
    must_authenticate(lambda: a.list_cluster())
    a = login("alice", "alice-password-2")
    herself = a.by_id_user(alice.id)
    assert not has_link(herself, "update"), herself
    assert "actions" not in herself.__dict__ or "setpassword" not in herself.actions.__dict__
    c.delete(c.by_id_user(alice.id))
    must_authenticate(lambda: a.list_cluster())
    assert c.list_global_role_binding(userId=alice.id).data == [], "its bindings went too"
    assert c.list_cluster_role_template_binding(userId=alice.id).data == [], \
        "its cluster bindings went too"
    for cluster in (owned, member, hidden, mine):
        c.delete(c.by_id_cluster(cluster.id))
    ok("self-protection, disabling and deleting")


{"discovery": discovery, "clusters": clusters, "settings": settings, "tokens": tokens,
 "password": password, "users": users}[SCENARIO]()
