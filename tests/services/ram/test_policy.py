"""The RAM policy language: parsing with precise errors, matching, conditions, decisions and trust."""

from __future__ import annotations

import fnmatch
import json
import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from services.ram import policy
from services.ram.policy import Match, NamedPolicy, PolicyError, RequestContext, Verdict, decide

ACCT = "1234567890123456"
ANY = "acs:ecs:cn-hangzhou:1:instance/i-1"


def doc(*statements: object, version: object = "1") -> str:
    return json.dumps({"Version": version, "Statement": list(statements)})


def allow(action: object, resource: object = "*", **extra: object) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: object, resource: object = "*", **extra: object) -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def named(*statements: dict, name: str = "Custom:P", version: str = "v1") -> NamedPolicy:
    return NamedPolicy(name, version, policy.parse(doc(*statements)))


def verdict(text: str, action: str, resource: str = "*", name: str = "p") -> Verdict:
    return policy.evaluate([(name, policy.parse(text))], action, resource)


def allowed(statements: list[dict], action: str, resource: str = ANY, keys: dict | None = None) -> bool:
    return decide([named(*statements)], RequestContext(action, resource, keys or {})).allowed


def trust_doc(*statements: dict) -> policy.Document:
    return policy.parse(doc(*statements), trust=True)


# -- parse errors: message, location and code ------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message", "location"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2", "line 1 column 2"),
        ('{"Version": "1",\n "Statement": [}', "not valid JSON: Expecting value at line 2 column 16", "line 2 column 16"),
        ("[]", "the document must be a JSON object", ""),
        (json.dumps({"Version": "1", "Statement": [allow("ecs:*")], "Id": "x"}), 'the document has an unknown element "Id"', "Id"),
        (doc(allow("ecs:*"), version="2"), '"Version" must be "1"', "Version"),
        (doc(allow("ecs:*"), version=1), '"Version" must be "1"', "Version"),
        (json.dumps({"Statement": [allow("ecs:*")]}), '"Version" must be "1"', "Version"),
        (json.dumps({"Version": "1"}), '"Statement" must be a non-empty list', "Statement"),
        (json.dumps({"Version": "1", "Statement": []}), '"Statement" must be a non-empty list', "Statement"),
        (json.dumps({"Version": "1", "Statement": "x"}), '"Statement" must be a non-empty list', "Statement"),
        (doc("x"), "Statement[0] must be an object", "Statement[0]"),
        (doc(allow("ecs:*"), {"Effect": "allow", "Action": "ecs:*", "Resource": "*"}),
         "Statement[1].Effect must be \"Allow\" or \"Deny\", got 'allow'", "Statement[1].Effect"),
        (doc({"Action": "ecs:*", "Resource": "*"}), 'Statement[0].Effect must be "Allow" or "Deny", got None', "Statement[0].Effect"),
        (doc(allow("ecs:*", Actions="x")), 'Statement[0] has an unknown element "Actions"', "Statement[0].Actions"),
        (doc({"Effect": "Allow", "Action": "ecs:*", "NotResource": "acs:ecs:*:*:*"}),
         "Statement[0].NotResource is not supported: RAM has no NotResource, use Resource", "Statement[0].NotResource"),
        (doc(allow("ecs:*", Sid="")), "Statement[0].Sid must be a non-empty string", "Statement[0].Sid"),
        (doc(allow("ecs:*", Sid=3)), "Statement[0].Sid must be a non-empty string", "Statement[0].Sid"),
        (doc({"Effect": "Allow", "Resource": "*"}), "Statement[0] needs exactly one of Action and NotAction", "Statement[0]"),
        (doc({"Effect": "Allow", "Action": "ecs:*", "NotAction": "ram:*", "Resource": "*"}),
         "Statement[0] needs exactly one of Action and NotAction", "Statement[0]"),
        (doc(allow("ecsDescribeInstances")), 'Statement[0].Action "ecsDescribeInstances" must look like "service:Action" or "*"',
         "Statement[0].Action"),
        (doc({"Effect": "Deny", "NotAction": ["ram:*", "oops"], "Resource": "*"}),
         'Statement[0].NotAction "oops" must look like "service:Action" or "*"', "Statement[0].NotAction"),
        (doc(allow([])), "Statement[0].Action must be a non-empty string or list of strings", "Statement[0].Action"),
        (doc(allow("")), "Statement[0].Action must be a non-empty string or list of strings", "Statement[0].Action"),
        (doc(allow(["ecs:*", ""])), "Statement[0].Action must be a non-empty string or list of strings", "Statement[0].Action"),
        (doc(allow(["ecs:*", 3])), "Statement[0].Action must be a non-empty string or list of strings", "Statement[0].Action"),
        (doc({"Effect": "Allow", "Action": "ecs:*"}), "Statement[0].Resource must be a non-empty string or list of strings",
         "Statement[0].Resource"),
        (doc(allow("ecs:*", "")), "Statement[0].Resource must be a non-empty string or list of strings", "Statement[0].Resource"),
        (doc(allow("ecs:*", "instance/i-1")),
         'Statement[0].Resource "instance/i-1" must be "*" or an ARN acs:<service>:<region>:<account>:<id>', "Statement[0].Resource"),
        (doc(allow("ecs:*", ["acs:ecs:*:*:*", "arn:aws:s3:::b"])),
         'Statement[0].Resource "arn:aws:s3:::b" must be "*" or an ARN acs:<service>:<region>:<account>:<id>', "Statement[0].Resource"),
        (doc(allow("ecs:*", "acs:ecs:*:*")),  # four fields
         'Statement[0].Resource "acs:ecs:*:*" must be "*" or an ARN acs:<service>:<region>:<account>:<id>', "Statement[0].Resource"),
        (doc(allow("ecs:*", "acs::*:*:x")),
         'Statement[0].Resource "acs::*:*:x" must be "*" or an ARN acs:<service>:<region>:<account>:<id>', "Statement[0].Resource"),
        (doc(allow("ecs:*", Principal={"Service": "ecs.aliyuncs.com"})),
         "Statement[0].Principal is only allowed in a trust policy", "Statement[0].Principal"),
        # conditions
        (doc(allow("ecs:*"), allow("ecs:*"), allow("*", Condition={"StringEqualz": {"a:b": "c"}})),
         "Statement[2].Condition.StringEqualz is not a condition operator", "Statement[2].Condition.StringEqualz"),
        (doc(allow("*", Condition={"stringequals": {"a:b": "c"}})),
         'Statement[0].Condition.stringequals is not a condition operator (did you mean "StringEquals"?)',
         "Statement[0].Condition.stringequals"),
        (doc(allow("*", Condition={"NullIfExists": {"a:b": "true"}})),
         "Statement[0].Condition.NullIfExists is not a condition operator", "Statement[0].Condition.NullIfExists"),
        (doc(allow("*", Condition=["StringEquals"])), "Statement[0].Condition must be an object of operators", "Statement[0].Condition"),
        (doc(allow("*", Condition={"StringEquals": "x"})),
         "Statement[0].Condition.StringEquals must be a non-empty object of condition keys", "Statement[0].Condition.StringEquals"),
        (doc(allow("*", Condition={"StringEquals": {}})),
         "Statement[0].Condition.StringEquals must be a non-empty object of condition keys", "Statement[0].Condition.StringEquals"),
        (doc(allow("*", Condition={"StringEquals": {"": "x"}})),
         "Statement[0].Condition.StringEquals has an empty condition key", "Statement[0].Condition.StringEquals"),
        (doc(allow("*", Condition={"StringEquals": {"a:b": {"x": 1}}})),
         "Statement[0].Condition.StringEquals.a:b must be a string, number or boolean, or a non-empty list of them",
         "Statement[0].Condition.StringEquals.a:b"),
        (doc(allow("*", Condition={"StringEquals": {"a:b": ["x", ["y"]]}})),
         "Statement[0].Condition.StringEquals.a:b must be a string, number or boolean, or a non-empty list of them",
         "Statement[0].Condition.StringEquals.a:b"),
        (doc(allow("*", Condition={"StringEquals": {"a:b": []}})),
         "Statement[0].Condition.StringEquals.a:b must be a string, number or boolean, or a non-empty list of them",
         "Statement[0].Condition.StringEquals.a:b"),
        (doc(allow("*", Condition={"StringEquals": {"a:b": None}})),
         "Statement[0].Condition.StringEquals.a:b must be a string, number or boolean, or a non-empty list of them",
         "Statement[0].Condition.StringEquals.a:b"),
        (doc(allow("*", Condition={"StringLike": {"a:b": ""}})),
         "Statement[0].Condition.StringLike.a:b has an empty value", "Statement[0].Condition.StringLike.a:b"),
        (doc(allow("*", Condition={"NumericLessThan": {"a:b": ["1", "ten"]}})),
         'Statement[0].Condition.NumericLessThan.a:b: "ten" is not a number', "Statement[0].Condition.NumericLessThan.a:b"),
        (doc(allow("*", Condition={"NumericEqualsIfExists": {"a:b": True}})),
         "Statement[0].Condition.NumericEqualsIfExists.a:b: true is not a number", "Statement[0].Condition.NumericEqualsIfExists.a:b"),
        (doc(allow("*", Condition={"DateLessThan": {"acs:CurrentTime": "tomorrow"}})),
         'Statement[0].Condition.DateLessThan.acs:CurrentTime: "tomorrow" is not an ISO 8601 date-time or epoch seconds',
         "Statement[0].Condition.DateLessThan.acs:CurrentTime"),
        (doc(allow("*", Condition={"DateLessThan": {"acs:CurrentTime": "2019-13-01T00:00:00Z"}})),
         'Statement[0].Condition.DateLessThan.acs:CurrentTime: "2019-13-01T00:00:00Z" is not an ISO 8601 date-time or epoch seconds',
         "Statement[0].Condition.DateLessThan.acs:CurrentTime"),
        (doc(allow("*", Condition={"IpAddress": {"acs:SourceIp": ["10.0.0.0/8", "10.0.0.300"]}})),
         'Statement[0].Condition.IpAddress.acs:SourceIp: "10.0.0.300" is not an IP address or CIDR block',
         "Statement[0].Condition.IpAddress.acs:SourceIp"),
        (doc(allow("*", Condition={"NotIpAddress": {"acs:SourceIp": "10.0.0.0/33"}})),
         'Statement[0].Condition.NotIpAddress.acs:SourceIp: "10.0.0.0/33" is not an IP address or CIDR block',
         "Statement[0].Condition.NotIpAddress.acs:SourceIp"),
        (doc(allow("*", Condition={"IpAddress": {"acs:SourceIp": 10}})),
         "Statement[0].Condition.IpAddress.acs:SourceIp: 10 is not an IP address or CIDR block",
         "Statement[0].Condition.IpAddress.acs:SourceIp"),
        (doc(allow("*", Condition={"Bool": {"acs:SecureTransport": "yes"}})),
         'Statement[0].Condition.Bool.acs:SecureTransport: "yes" must be "true" or "false"',
         "Statement[0].Condition.Bool.acs:SecureTransport"),
    ],
)
def test_parse_rejects_with_a_precise_message_and_location(text: str, message: str, location: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy.parse(text)
    assert str(caught.value) == message
    assert caught.value.location == location
    assert caught.value.code == "MalformedPolicyDocument"
    assert not location or location.split(".")[-1].split(" ")[0] in str(caught.value)


@pytest.mark.parametrize("text", ["", "x" * 6145, doc(allow("ecs:*")) + " " * 6144])
def test_documents_of_the_wrong_length_get_the_length_code(text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy.parse(text)
    assert (str(caught.value), caught.value.code) == ("the document must be 1-6144 characters", "InvalidParameter.PolicyDocument.Length")


def test_max_chars_sets_a_smaller_limit_even_for_a_document_seen_before() -> None:
    text = doc(allow("ecs:*", "acs:ecs:*:*:instance/" + "x" * 2100))
    assert policy.parse(text).statements  # parsed (and cached) under the default limit
    with pytest.raises(PolicyError, match=r"^the document must be 1-2048 characters$") as caught:
        policy.parse(text, max_chars=2048)
    assert caught.value.code == "InvalidParameter.PolicyDocument.Length"


def test_policy_error_is_a_value_error_with_code_and_location() -> None:
    assert issubclass(PolicyError, ValueError)
    error = PolicyError("m", location="Statement[0]")
    assert (error.code, error.location, str(error)) == ("MalformedPolicyDocument", "Statement[0]", "m")


def test_parse_accepts_a_single_statement_object_and_string_values() -> None:
    text = json.dumps({"Version": "1", "Statement": allow("ecs:DescribeInstances", "acs:ecs:*:*:instance/i-1")})
    document = policy.parse(text)
    assert document.text == text
    assert len(document.statements) == 1
    statement = document.statements[0]
    assert (statement.index, statement.effect, statement.not_action, statement.sid) == (0, "Allow", False, "")
    assert statement.actions == ("ecs:DescribeInstances",) and statement.resources == ("acs:ecs:*:*:instance/i-1",)
    assert statement.principals == {}


def test_parse_keeps_statement_order_indexes_sids_and_conditions() -> None:
    document = policy.parse(doc(allow("ecs:*", Sid="A"), deny("ram:*"),
                                allow("oss:*", Condition={"StringLike": {"OSS:Prefix": ["a/*", "b/*"]}})))
    assert [(s.index, s.effect, s.sid) for s in document.statements] == [(0, "Allow", "A"), (1, "Deny", ""), (2, "Allow", "")]
    condition = document.statements[2].conditions[0]
    assert (condition.operator, condition.key, condition.values, condition.if_exists) == ("StringLike", "OSS:Prefix", ("a/*", "b/*"), False)


def test_parse_accepts_a_document_of_exactly_the_maximum_size() -> None:
    base = doc(allow("ecs:*"))
    padded = base[:-1] + " " * (policy.MAX_DOCUMENT_CHARS - len(base)) + base[-1]
    assert len(padded) == policy.MAX_DOCUMENT_CHARS
    assert len(policy.parse(padded).statements) == 1


def test_condition_values_may_be_json_numbers_and_booleans() -> None:
    document = policy.parse(doc(allow("*", Condition={"NumericLessThan": {"a:n": 10}, "Bool": {"acs:MFAPresent": True},
                                                       "StringEquals": {"a:s": [1, True]}})))
    request = RequestContext("ecs:Run", ANY, {"a:n": 9, "acs:MFAPresent": "true", "a:s": "true"})
    assert decide([NamedPolicy("p", "", document)], request).allowed


def test_an_empty_condition_block_is_no_condition() -> None:
    assert allowed([allow("*", Condition={})], "ecs:Run")


def test_resource_arns_may_have_an_empty_region_and_colons_in_the_relative_id() -> None:
    assert allowed([allow("*", f"acs:ram::{ACCT}:role/x")], "ram:PassRole", f"acs:ram::{ACCT}:role/x")
    assert allowed([allow("*", "acs:oss:*:*:b/a:b:c")], "oss:GetObject", "acs:oss:*:1:b/a:b:c")


def test_every_documented_operator_and_its_if_exists_form_is_known() -> None:
    base = {f"String{x}" for x in ("Equals", "NotEquals", "EqualsIgnoreCase", "NotEqualsIgnoreCase", "Like", "NotLike")}
    base |= {f"{kind}{x}" for kind in ("Numeric", "Date")
             for x in ("Equals", "NotEquals", "LessThan", "LessThanEquals", "GreaterThan", "GreaterThanEquals")}
    base |= {"Bool", "IpAddress", "NotIpAddress"}
    assert len(base) == 21
    assert set(policy.OPERATORS) == base | {f"{name}IfExists" for name in policy.IF_EXISTS}
    assert policy.IF_EXISTS <= base
    assert all(policy.OPERATORS[f"{name}IfExists"].if_exists for name in policy.IF_EXISTS)
    assert not any(policy.OPERATORS[name].if_exists for name in base)


# -- trust documents -----------------------------------------------------------------------
def test_trust_documents_need_a_principal() -> None:
    with pytest.raises(PolicyError, match=r"^Statement\[0\]\.Principal must name Service, RAM or Federated principals$") as caught:
        policy.parse(doc({"Effect": "Allow", "Action": "sts:AssumeRole"}), trust=True)
    assert caught.value.location == "Statement[0].Principal"


def test_trust_documents_reject_unknown_principal_kinds() -> None:
    with pytest.raises(PolicyError, match=r"^Statement\[0\]\.Principal has unknown kind 'AWS'$") as caught:
        policy.parse(doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": "x"}}), trust=True)
    assert caught.value.location == "Statement[0].Principal.AWS"


def test_trust_principal_values_must_be_strings() -> None:
    with pytest.raises(PolicyError, match=r"^Statement\[0\]\.Principal\.RAM must be a non-empty string or list of strings$"):
        policy.parse(doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": []}}), trust=True)


def test_trust_documents_refuse_a_resource() -> None:
    with pytest.raises(PolicyError, match=r"^Statement\[0\]\.Resource is not allowed in a trust policy$"):
        policy.parse(doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": "*"}, "Resource": "*"}), trust=True)


def test_trust_documents_need_no_resource_and_keep_principals() -> None:
    document = policy.parse(policy.ECS_TRUST_POLICY, trust=True)
    assert document.trust
    assert document.statements[0].principals == {"Service": ("ecs.aliyuncs.com",)}
    assert document.statements[0].resources == ()


def test_a_trust_document_is_not_a_valid_permission_policy() -> None:
    with pytest.raises(PolicyError, match=r"^Statement\[0\]\.Principal is only allowed in a trust policy$"):
        policy.parse(policy.ECS_TRUST_POLICY)


# -- globs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "action", "allowed"),
    [
        ("ecs:DescribeInstances", "ecs:DescribeInstances", True),
        ("ecs:DescribeInstances", "ecs:DescribeInstancesX", False),
        ("ecs:Describe*", "ecs:DescribeInstances", True),
        ("ecs:Describe*", "ecs:Describe", True),  # * matches the empty sequence
        ("ecs:Describe*", "ecs:RunInstances", False),
        ("ecs:Describe*", "xecs:DescribeInstances", False),  # anchored at the start
        ("ecs:*Instances", "ecs:RunInstances", True),  # * in the middle
        ("ecs:*Instances", "ecs:RunInstance", False),
        ("ecs:Run*s", "ecs:Runs", True),
        ("ecs:Describe*Attribute", "ecs:DescribeInstanceAttribute", True),
        ("ecs:Describe*Attribute", "ecs:DescribeInstanceAttributes", False),
        ("*:List*", "ram:ListPoliciesForRole", True),
        ("*:List*", "ram:GetRole", False),
        ("e?s:*", "ecs:RunInstances", True),
        ("e?s:*", "es:RunInstances", False),
        ("*", "oss:GetObject", True),
        ("ecs:Describe?nstances", "ecs:DescribeInstances", True),
        ("ecs:Describe?nstances", "ecs:Describenstances", False),  # ? is exactly one character
        ("ecs:Describe?nstances", "ecs:DescribeXXnstances", False),
        ("ecs:describeinstances", "ECS:DESCRIBEINSTANCES", True),  # actions ignore case
        ("ECS:Describe*", "ecs:describeimages", True),
        ("*:LIST*", "Ram:listUsers", True),
        ("ecs:Describe.nstances", "ecs:DescribeInstances", False),  # regex characters are literal
        ("ecs:(Run|Stop)Instances", "ecs:RunInstances", False),
        ("ecs:[R]unInstances", "ecs:RunInstances", False),  # brackets are literal, unlike fnmatch
    ],
)
def test_action_matching(pattern: str, action: str, allowed: bool) -> None:
    assert verdict(doc(allow(pattern)), action).allowed is allowed


@pytest.mark.parametrize(
    ("pattern", "resource", "allowed"),
    [
        ("acs:oss:*:*:mybucket/*", "acs:oss:*:1:mybucket/a/b.txt", True),
        ("acs:oss:*:*:mybucket/*", "acs:oss:*:1:otherbucket/a", False),
        ("acs:oss:*:*:mybucket/*", "acs:oss:*:1:mybucket", False),
        ("acs:oss:*:*:mybucket", "acs:oss:*:1:mybucket", True),
        ("acs:ecs:*:*:instance/i-00?", "acs:ecs:cn-hangzhou:1:instance/i-001", True),
        ("acs:ecs:*:*:instance/i-00?", "acs:ecs:cn-hangzhou:1:instance/i-0010", False),
        ("acs:ecs:*:*:instance/i-00?", "acs:ecs:cn-hangzhou:1:instance/i-00", False),
        ("acs:ram:*:*:role/MyRole", "acs:ram:*:1:role/myrole", False),  # resources are case-sensitive
        ("acs:ram:*:*:role/myrole", "ACS:RAM:*:1:ROLE/MYROLE", False),
        ("acs:ram:*:*:role/MyRole", f"acs:ram:*:{ACCT}:role/MyRole", True),
        # * in an ARN field is a glob over the whole string: it matches an empty field too
        ("acs:ram:*:*:role/MyApplicationRole", f"acs:ram:*:{ACCT}:role/MyApplicationRole", True),
        ("acs:ram:*:*:role/MyApplicationRole", f"acs:ram::{ACCT}:role/MyApplicationRole", True),
        ("acs:ram:*:*:role/MyApplicationRole", f"acs:ram::{ACCT}:role/MyApplicationRole2", False),
        ("acs:ram:*:*:role/MyApplicationRole", f"acs:ram::{ACCT}:user/MyApplicationRole", False),
        ("acs:ecs:cn-*:*:instance/*", "acs:ecs:cn-hangzhou:1:instance/i-1", True),
        ("acs:ecs:cn-*:*:instance/*", "acs:ecs:us-west-1:1:instance/i-1", False),
        (f"acs:ecs:cn-hangzhou:{ACCT}:instance/i-1", f"acs:ecs:cn-hangzhou:{ACCT}:instance/i-1", True),
        (f"acs:ecs:cn-hangzhou:{ACCT}:instance/i-1", f"acs:ecs:cn-hangzhou:{ACCT}:instance/i-10", False),
        ("acs:*:*:*:*", "acs:ecs:cn-hangzhou:1:instance/i-1", True),
        ("*", "acs:ecs:cn-hangzhou:1:instance/i-1", True),
    ],
)
def test_resource_matching(pattern: str, resource: str, allowed: bool) -> None:
    assert verdict(doc(allow("ecs:*", pattern)), "ecs:Do", resource).allowed is allowed


GLOB_CHARS = "ab*?:/"


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(st.text(GLOB_CHARS, max_size=8), min_size=1, max_size=3), subject=st.text("ab:/", max_size=10))
@example(patterns=["ab", "a*"], subject="aab")  # exact + prefix
@example(patterns=["ab", "a*", "*b?"], subject="bba")  # exact + prefix + general
@example(patterns=["a*", "b*"], subject="b")
@example(patterns=["?"], subject="")
@example(patterns=["a*b*a"], subject="abba")
def test_compiled_globs_agree_with_fnmatch(patterns: list[str], subject: str) -> None:
    expected = any(fnmatch.fnmatchcase(subject, p) for p in patterns)
    assert policy._matcher(patterns)(subject) is expected, f"patterns={patterns!r} subject={subject!r}"


@pytest.mark.parametrize(("patterns", "yes", "no"), [
    (["ecs:RunInstances", "ecs:Describe*"], ["ecs:runinstances", "ecs:describeregions"], ["ecs:stopinstances"]),
    (["ecs:RunInstances", "ecs:Describe*", "ecs:*Tags"], ["ecs:describe", "ecs:runinstances", "ecs:listtags"], ["ecs:tag"]),
    (["oss:Get*", "oss:List*"], ["oss:getobject", "oss:listbuckets"], ["oss:putobject"]),
])
def test_statements_mixing_exact_prefix_and_general_patterns(patterns: list[str], yes: list[str], no: list[str]) -> None:
    text = doc(allow(patterns))
    assert all(verdict(text, action).allowed for action in yes)
    assert not any(verdict(text, action).allowed for action in no)


def test_a_pathological_glob_stays_fast() -> None:
    # a backtracking matcher needs ~C(200, 12) steps here; the compiled one is linear-ish
    match = policy._matcher(["*a*a*a*a*a*a*a*a*a*a*a*a*b"])
    assert match("a" * 200) is False
    assert match("a" * 200 + "b") is True


# -- the older entry point: evaluate ------------------------------------------------------------
def test_any_of_several_actions_or_resources_matches() -> None:
    text = doc(allow(["ecs:RunInstances", "oss:GetObject"], ["acs:oss:*:*:a/*", "acs:oss:*:*:b/*"]))
    assert verdict(text, "oss:GetObject", "acs:oss:*:1:b/key").allowed
    assert verdict(text, "ecs:RunInstances", "acs:oss:*:1:a/key").allowed
    assert not verdict(text, "ecs:StopInstances", "acs:oss:*:1:a/key").allowed
    assert not verdict(text, "oss:GetObject", "acs:oss:*:1:c/key").allowed


def test_not_action_allows_everything_but_the_listed_actions() -> None:
    text = doc({"Effect": "Allow", "NotAction": ["ram:*", "ims:*"], "Resource": "*"})
    assert verdict(text, "ecs:RunInstances").allowed
    assert verdict(text, "oss:PutObject").allowed
    assert not verdict(text, "ram:CreateUser").allowed
    assert not verdict(text, "RAM:CreateUser").allowed  # NotAction ignores case too
    assert not verdict(text, "ims:Anything").allowed


def test_deny_with_not_action_denies_everything_else() -> None:
    text = doc(allow("*"), {"Effect": "Deny", "NotAction": "ecs:Describe*", "Resource": "*"})
    assert verdict(text, "ecs:DescribeInstances").allowed
    assert not verdict(text, "ecs:RunInstances").allowed
    assert not verdict(text, "oss:GetObject").allowed


def test_no_matching_statement_is_an_implicit_deny() -> None:
    result = verdict(doc(allow("ecs:*")), "oss:GetObject", "acs:oss:*:1:b/k")
    assert result == Verdict(False, "no statement allowed oss:GetObject on acs:oss:*:1:b/k")
    assert result.decision == "ImplicitDeny" and result.matches == ()


def test_evaluate_names_the_first_allowing_statement() -> None:
    text = doc(allow("oss:*"), allow("ecs:Run*"), allow("ecs:*"))
    result = verdict(text, "ecs:RunInstances", name="Custom:mine")
    assert (result.allowed, result.reason, result.decision) == (True, "allowed by policy Custom:mine statement 1", "Allow")
    assert [m.statement for m in result.matches] == [1, 2]


@pytest.mark.parametrize("order", ["deny-first", "allow-first"])
def test_explicit_deny_beats_allow_in_any_order(order: str) -> None:
    statements = [allow("ecs:*"), deny("ecs:RunInstances")]
    if order == "deny-first":
        statements.reverse()
    result = verdict(doc(*statements), "ecs:RunInstances", name="X")
    assert result.allowed is False and result.decision == "ExplicitDeny"
    assert result.reason == f"explicitly denied by policy X statement {statements.index(deny('ecs:RunInstances'))}"
    assert verdict(doc(*statements), "ecs:StopInstances").allowed


def test_deny_in_one_policy_beats_allow_in_another() -> None:
    policies = [("Admin", policy.parse(doc(allow("*")))), ("NoRam", policy.parse(doc(deny("ram:*"))))]
    result = policy.evaluate(policies, "ram:CreateUser", "*")
    assert (result.allowed, result.reason) == (False, "explicitly denied by policy NoRam statement 0")
    assert policy.evaluate(policies, "ecs:RunInstances", "*").allowed


def test_evaluate_takes_condition_keys() -> None:
    policies = [("p", policy.parse(doc(allow("*", Condition={"IpAddress": {"acs:SourceIp": "10.0.0.0/8"}}))))]
    assert policy.evaluate(policies, "ecs:Run", "*", keys={"acs:SourceIp": "10.1.1.1"}).allowed
    assert not policy.evaluate(policies, "ecs:Run", "*", keys={"acs:SourceIp": "11.1.1.1"}).allowed
    assert not policy.evaluate(policies, "ecs:Run", "*").allowed


def test_deny_only_applies_to_matching_resources() -> None:
    text = doc(allow("oss:*"), deny("oss:*", "acs:oss:*:*:secret/*"))
    assert verdict(text, "oss:GetObject", "acs:oss:*:1:public/a").allowed
    assert not verdict(text, "oss:GetObject", "acs:oss:*:1:secret/a").allowed


def test_no_policies_at_all_is_an_implicit_deny() -> None:
    assert policy.evaluate([], "ecs:RunInstances", "*").allowed is False
    assert decide([], RequestContext("ecs:RunInstances", "*")).decision == "ImplicitDeny"


# -- decide ---------------------------------------------------------------------------------
def test_decide_names_policy_version_statement_and_sid() -> None:
    admin = named(allow("*"), name="System:AdministratorAccess", version="v1")
    verdict_ = decide([admin], RequestContext("ecs:RunInstances", ANY))
    assert verdict_ == Verdict(True, "allowed by System:AdministratorAccess v1 statement 0", "Allow",
                               (Match("System:AdministratorAccess", "v1", 0, "Allow"),))
    no_prod = named(allow("ecs:*"), deny("ecs:*", "acs:ecs:*:*:instance/prod-*", Sid="NoProd"), name="Custom:X", version="v2")
    denied = decide([admin, no_prod], RequestContext("ecs:StopInstance", "acs:ecs:cn-hangzhou:1:instance/prod-1"))
    assert denied == Verdict(False, "explicitly denied by Custom:X v2 statement 1 (Sid NoProd)", "ExplicitDeny",
                             (Match("Custom:X", "v2", 1, "Deny", "NoProd"),))


def test_decide_lists_every_matching_allow_and_every_matching_deny() -> None:
    first = named(allow("ecs:*"), allow("ecs:Run*", Sid="Run"), allow("oss:*"), name="A")
    second = named(allow("*"), name="B", version="v3")
    result = decide([first, second], RequestContext("ecs:RunInstances", ANY))
    assert result.matches == (Match("A", "v1", 0, "Allow"), Match("A", "v1", 1, "Allow", "Run"), Match("B", "v3", 0, "Allow"))
    denies = named(deny("ecs:*"), deny("*", Sid="All"), name="D")
    result = decide([first, denies, second], RequestContext("ecs:RunInstances", ANY))
    assert result.decision == "ExplicitDeny"
    assert result.matches == (Match("D", "v1", 0, "Deny"), Match("D", "v1", 1, "Deny", "All"))
    assert result.reason == "explicitly denied by D v1 statement 0 and 1 other statement"


def test_the_implicit_deny_reason_names_the_action_and_resource_as_asked() -> None:
    result = decide([named(allow("oss:*"))], RequestContext("ECS:RunInstances", ANY))
    assert result == Verdict(False, f"no statement allowed ECS:RunInstances on {ANY}", "ImplicitDeny", ())


def test_statements_of_other_services_are_not_even_looked_at() -> None:
    document = policy.parse(doc(allow("ecs:Describe*"), allow(["oss:Get*", "OSS:List*"]), allow("*:List*"),
                                {"Effect": "Deny", "NotAction": "ram:*", "Resource": "*"}, allow("e?s:Run*")))
    assert [s.index for s in document.candidates("ecs")] == [0, 2, 3, 4]
    assert [s.index for s in document.candidates("oss")] == [1, 2, 3, 4]
    assert [s.index for s in document.candidates("rds")] == [2, 3, 4]


def test_a_session_policy_narrows_the_identity_policies() -> None:
    identity = [named(allow("oss:*"), name="System:AliyunOSSFullAccess")]
    session = [NamedPolicy("session-policy", "", policy.parse(doc(allow("oss:GetObject", "acs:oss:*:*:public/*"), allow("ecs:*"))))]
    ok = decide(identity, RequestContext("oss:GetObject", "acs:oss:*:1:public/a"), session=session)
    assert ok.allowed and ok.decision == "Allow"
    assert ok.reason == "allowed by System:AliyunOSSFullAccess v1 statement 0, and the session policy by session-policy statement 0"
    assert ok.matches == (Match("System:AliyunOSSFullAccess", "v1", 0, "Allow"), Match("session-policy", "", 0, "Allow"))
    narrowed = decide(identity, RequestContext("oss:GetObject", "acs:oss:*:1:private/a"), session=session)
    assert (narrowed.allowed, narrowed.decision, narrowed.matches) == (False, "ImplicitDeny", ())
    assert narrowed.reason == ("session policy: no statement allowed oss:GetObject on acs:oss:*:1:private/a"
                               " (the identity policies allow it by System:AliyunOSSFullAccess v1 statement 0)")
    # the session policy never widens: ecs:* is not granted by the identity policies
    widened = decide(identity, RequestContext("ecs:RunInstances", ANY), session=session)
    assert widened.reason == f"no statement allowed ecs:RunInstances on {ANY}"


def test_a_deny_in_the_session_policy_is_an_explicit_deny() -> None:
    session = [NamedPolicy("session-policy", "", policy.parse(doc(allow("*"), deny("oss:Delete*", Sid="Keep"))))]
    result = decide([named(allow("*"), name="Admin")], RequestContext("oss:DeleteObject", "acs:oss:*:1:b/k"), session=session)
    assert result == Verdict(False, "explicitly denied by session-policy statement 1 (Sid Keep)", "ExplicitDeny",
                             (Match("session-policy", "", 1, "Deny", "Keep"),))


def test_an_empty_session_is_no_session() -> None:
    assert decide([named(allow("*"))], RequestContext("ecs:Run", ANY), session=[]).allowed


# -- conditions ------------------------------------------------------------------------------
CONDITION_CASES = [
    # operator, policy values, request keys, expected
    ("StringEquals", "dev", {"test:Key": "dev"}, True),
    ("StringEquals", "dev", {"test:Key": "Dev"}, False),  # values are case-sensitive
    ("StringEquals", "dev", {"TEST:KEY": "dev"}, True),  # key names are not
    ("StringEquals", "dev", {}, False),  # missing key
    ("StringEquals", "dev", {"test:Key": None}, False),  # None is missing
    ("StringEquals", ["prod", "dev"], {"test:Key": "dev"}, True),  # values of one key: OR
    ("StringEquals", "dev", {"test:Key": ["x", "dev"]}, True),  # multi-valued request: any value
    ("StringEquals", "dev", {"test:Key": ["x", "y"]}, False),
    ("StringEquals", "dev", {"test:Key": []}, False),  # an empty list is missing
    ("StringEquals", "true", {"test:Key": True}, True),
    ("StringEquals", "5", {"test:Key": 5}, True),
    ("StringNotEquals", "dev", {"test:Key": "prod"}, True),
    ("StringNotEquals", "dev", {"test:Key": "dev"}, False),
    ("StringNotEquals", ["dev", "test"], {"test:Key": "test"}, False),  # negated: matches none of the values
    ("StringNotEquals", ["dev", "test"], {"test:Key": "prod"}, True),
    ("StringNotEquals", "dev", {}, False),
    ("StringNotEquals", "dev", {"test:Key": ["dev", "prod"]}, True),  # any request value satisfies it
    ("StringNotEquals", "dev", {"test:Key": ["dev"]}, False),
    ("StringEqualsIgnoreCase", "Dev", {"test:Key": "dEV"}, True),
    ("StringEqualsIgnoreCase", "Dev", {"test:Key": "prod"}, False),
    ("StringNotEqualsIgnoreCase", "Dev", {"test:Key": "DEV"}, False),
    ("StringNotEqualsIgnoreCase", "Dev", {"test:Key": "prod"}, True),
    ("StringLike", "home/*", {"test:Key": "home/a/b"}, True),
    ("StringLike", "home/*", {"test:Key": "home/"}, True),  # * matches empty
    ("StringLike", "home/*", {"test:Key": "Home/a"}, False),  # case-sensitive
    ("StringLike", "ho?e/*", {"test:Key": "home/x"}, True),
    ("StringLike", "ho?e/*", {"test:Key": "hoome/x"}, False),
    ("StringLike", "*/2015/*", {"test:Key": "hangzhou/2015/a"}, True),
    ("StringLike", ["a/*", "b/*"], {"test:Key": "b/1"}, True),
    ("StringNotLike", "home/*", {"test:Key": "tmp/x"}, True),
    ("StringNotLike", "home/*", {"test:Key": "home/x"}, False),
    ("StringNotLike", ["a/*", "b/*"], {"test:Key": "b/1"}, False),
    ("NumericEquals", "10", {"test:Key": "10"}, True),
    ("NumericEquals", "10", {"test:Key": 10}, True),
    ("NumericEquals", "10", {"test:Key": "10.0"}, True),
    ("NumericEquals", "10", {"test:Key": "11"}, False),
    ("NumericEquals", "10", {"test:Key": "ten"}, False),
    ("NumericEquals", 10, {"test:Key": 10.0}, True),
    ("NumericNotEquals", ["10", "20"], {"test:Key": 15}, True),
    ("NumericNotEquals", ["10", "20"], {"test:Key": 20}, False),
    ("NumericNotEquals", "10", {"test:Key": "ten"}, False),  # not comparable: neither
    ("NumericNotEquals", "10", {"test:Key": True}, False),
    ("NumericLessThan", "10", {"test:Key": 9}, True),
    ("NumericLessThan", "10", {"test:Key": 10}, False),
    ("NumericLessThan", ["5", "10"], {"test:Key": 7}, True),  # less than any value
    ("NumericLessThan", "-1.5", {"test:Key": "-2"}, True),
    ("NumericLessThanEquals", "10", {"test:Key": 10}, True),
    ("NumericLessThanEquals", "10", {"test:Key": 11}, False),
    ("NumericGreaterThan", "10", {"test:Key": 11}, True),
    ("NumericGreaterThan", "10", {"test:Key": 10}, False),
    ("NumericGreaterThan", ["5", "10"], {"test:Key": 7}, True),
    ("NumericGreaterThanEquals", "10", {"test:Key": 10}, True),
    ("NumericGreaterThanEquals", "10", {"test:Key": 9}, False),
    ("DateEquals", "2019-08-12T11:12:00Z", {"test:Key": "2019-08-12T19:12:00+08:00"}, True),  # the same instant
    ("DateEquals", "2019-08-12T11:12:00Z", {"test:Key": "2019-08-12T11:12:01Z"}, False),
    ("DateEquals", "2019-08-12T11:12:00Z", {"test:Key": 1565608320}, True),  # epoch seconds
    ("DateEquals", "2019-08-12T11:12:00Z", {"test:Key": "1565608320"}, True),
    ("DateEquals", "1565608320", {"test:Key": "2019-08-12T11:12:00Z"}, True),
    ("DateEquals", "2019-08-12T11:12:00Z", {"test:Key": "2019-08-12T11:12:00"}, True),  # no offset: UTC
    ("DateEquals", "2019-08-12T11:12:00Z", {"test:Key": "2019-08-12t11:12:00z"}, True),
    ("DateEquals", "2019-08-12", {"test:Key": "2019-08-12T00:00:00Z"}, True),
    ("DateEquals", "2019-08-12T11:12:00Z", {"test:Key": datetime(2019, 8, 12, 11, 12, tzinfo=timezone.utc)}, True),
    ("DateNotEquals", "2019-08-12T11:12:00Z", {"test:Key": "2020-01-01T00:00:00Z"}, True),
    ("DateNotEquals", "2019-08-12T11:12:00Z", {"test:Key": "2019-08-12T11:12:00Z"}, False),
    ("DateNotEquals", "2019-08-12T11:12:00Z", {"test:Key": "garbage"}, False),
    ("DateLessThan", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T08:59:59Z"}, True),
    ("DateLessThan", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T09:00:00Z"}, False),
    ("DateLessThanEquals", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T09:00:00Z"}, True),
    ("DateLessThanEquals", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T09:00:01Z"}, False),
    ("DateGreaterThan", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T09:00:01Z"}, True),
    ("DateGreaterThan", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T09:00:00Z"}, False),
    ("DateGreaterThanEquals", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T09:00:00Z"}, True),
    ("DateGreaterThanEquals", "2019-08-12T17:00:00+08:00", {"test:Key": "2019-08-12T08:59:59Z"}, False),
    ("Bool", "true", {"test:Key": True}, True),
    ("Bool", "true", {"test:Key": "true"}, True),
    ("Bool", "true", {"test:Key": "TRUE"}, True),
    ("Bool", "TRUE", {"test:Key": "true"}, True),
    ("Bool", "true", {"test:Key": False}, False),
    ("Bool", "true", {"test:Key": "yes"}, False),
    ("Bool", "true", {}, False),
    ("Bool", "false", {"test:Key": False}, True),
    ("Bool", "false", {"test:Key": "False"}, True),
    ("Bool", True, {"test:Key": "true"}, True),
    ("IpAddress", ["192.168.0.0/16", "172.16.215.218"], {"test:Key": "192.168.3.4"}, True),
    ("IpAddress", ["192.168.0.0/16", "172.16.215.218"], {"test:Key": "172.16.215.218"}, True),
    ("IpAddress", ["192.168.0.0/16", "172.16.215.218"], {"test:Key": "172.16.215.219"}, False),
    ("IpAddress", ["192.168.0.0/16", "172.16.215.218"], {"test:Key": "10.0.0.1"}, False),
    ("IpAddress", "192.168.0.0/16", {"test:Key": "not-an-ip"}, False),
    ("IpAddress", "10.0.0.0/32", {"test:Key": "10.0.0.0"}, True),
    ("IpAddress", "10.0.0.1/8", {"test:Key": "10.9.9.9"}, True),  # host bits are ignored
    ("IpAddress", "2001:db8::/32", {"test:Key": "2001:db8::1"}, True),
    ("IpAddress", "2001:db8::/32", {"test:Key": "2001:db9::1"}, False),
    ("IpAddress", "0.0.0.0/0", {"test:Key": "::1"}, False),  # another IP version never matches
    ("IpAddress", "::/0", {"test:Key": "10.0.0.1"}, False),
    ("IpAddress", "192.168.0.0/16", {"test:Key": ["10.0.0.1", "192.168.0.1"]}, True),
    ("NotIpAddress", ["192.168.0.0/16", "172.16.215.218"], {"test:Key": "10.0.0.1"}, True),
    ("NotIpAddress", ["192.168.0.0/16", "172.16.215.218"], {"test:Key": "192.168.1.1"}, False),
    ("NotIpAddress", ["192.168.0.0/16", "172.16.215.218"], {"test:Key": "172.16.215.218"}, False),
    ("NotIpAddress", "192.168.0.0/16", {"test:Key": "bogus"}, False),
    ("NotIpAddress", "192.168.0.0/16", {}, False),
]


@pytest.mark.parametrize(("operator", "values", "keys", "expected"), CONDITION_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CONDITION_CASES)])
def test_condition_operators(operator: str, values: object, keys: dict, expected: bool) -> None:
    statement = allow("*", Condition={operator: {"test:Key": values}})
    assert allowed([statement], "ecs:RunInstances", ANY, keys) is expected


def test_every_base_operator_has_a_table_case_both_ways() -> None:
    seen = {(op, expected) for op, _, _, expected in CONDITION_CASES}
    for name in policy.IF_EXISTS:
        assert (name, True) in seen and (name, False) in seen, name


# (policy value, a request value that satisfies it, one that does not)
IF_EXISTS_SAMPLES = {
    "StringEquals": ("a", "a", "b"), "StringNotEquals": ("a", "b", "a"),
    "StringEqualsIgnoreCase": ("a", "A", "b"), "StringNotEqualsIgnoreCase": ("a", "b", "A"),
    "StringLike": ("a*", "ab", "ba"), "StringNotLike": ("a*", "ba", "ab"),
    "NumericEquals": ("1", 1, 2), "NumericNotEquals": ("1", 2, 1), "NumericLessThan": ("1", 0, 1),
    "NumericLessThanEquals": ("1", 1, 2), "NumericGreaterThan": ("1", 2, 1), "NumericGreaterThanEquals": ("1", 1, 0),
    "DateEquals": ("2020-01-01T00:00:00Z", "2020-01-01T08:00:00+08:00", "2020-01-02T00:00:00Z"),
    "DateNotEquals": ("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", "2020-01-01T00:00:00Z"),
    "DateLessThan": ("2020-01-01T00:00:00Z", "2019-12-31T23:59:59Z", "2020-01-01T00:00:00Z"),
    "DateLessThanEquals": ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2020-01-01T00:00:01Z"),
    "DateGreaterThan": ("2020-01-01T00:00:00Z", "2020-01-01T00:00:01Z", "2020-01-01T00:00:00Z"),
    "DateGreaterThanEquals": ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2019-12-31T23:59:59Z"),
    "Bool": ("true", True, False), "IpAddress": ("10.0.0.0/8", "10.1.2.3", "11.1.2.3"),
    "NotIpAddress": ("10.0.0.0/8", "11.1.2.3", "10.1.2.3"),
}


@pytest.mark.parametrize("name", sorted(IF_EXISTS_SAMPLES))
def test_if_exists_passes_a_missing_key_and_checks_a_present_one(name: str) -> None:
    value, good, bad = IF_EXISTS_SAMPLES[name]

    def check(operator: str, keys: dict) -> bool:
        return allowed([allow("*", Condition={operator: {"test:Key": value}})], "ecs:Run", ANY, keys)

    assert check(name, {"test:key": good}) and not check(name, {"test:key": bad}) and not check(name, {})
    assert check(f"{name}IfExists", {}) and check(f"{name}IfExists", {"other:Key": bad})
    assert check(f"{name}IfExists", {"test:key": []})  # an empty list is a missing key
    assert check(f"{name}IfExists", {"TEST:KEY": good})
    assert not check(f"{name}IfExists", {"Test:Key": bad})


def test_a_date_without_an_offset_is_utc_whatever_the_machine_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        statement = allow("*", Condition={"DateEquals": {"test:Key": "2021-03-04T05:06:07Z"}})
        assert allowed([statement], "ecs:Run", ANY, {"test:Key": "2021-03-04T05:06:07"})
        assert allowed([statement], "ecs:Run", ANY, {"test:Key": datetime(2021, 3, 4, 5, 6, 7)})
        naive = allow("*", Condition={"DateLessThan": {"test:Key": "2021-03-04T05:06:08"}})
        assert allowed([naive], "ecs:Run", ANY, {"test:Key": "2021-03-04T05:06:07+00:00"})
        assert not allowed([naive], "ecs:Run", ANY, {"test:Key": "2021-03-04T05:06:09+00:00"})
    finally:
        monkeypatch.undo()
        time.tzset()


def test_keys_under_one_operator_are_anded() -> None:
    statement = allow("*", Condition={"StringEquals": {"a:x": "1", "a:y": "2"}})
    assert allowed([statement], "ecs:Run", ANY, {"a:x": "1", "a:y": "2"})
    assert not allowed([statement], "ecs:Run", ANY, {"a:x": "1", "a:y": "3"})
    assert not allowed([statement], "ecs:Run", ANY, {"a:x": "1"})


def test_operators_in_one_block_are_anded() -> None:
    statement = allow("*", Condition={"IpAddress": {"acs:SourceIp": "10.0.0.0/8"}, "Bool": {"acs:SecureTransport": "true"}})
    assert allowed([statement], "ecs:Run", ANY, {"acs:SourceIp": "10.0.0.1", "acs:SecureTransport": True})
    assert not allowed([statement], "ecs:Run", ANY, {"acs:SourceIp": "10.0.0.1", "acs:SecureTransport": False})
    assert not allowed([statement], "ecs:Run", ANY, {"acs:SourceIp": "9.0.0.1", "acs:SecureTransport": True})


def test_a_deny_whose_condition_does_not_hold_does_not_deny() -> None:
    statements = [allow("*"), deny("*", Condition={"Bool": {"acs:SecureTransport": "false"}})]
    assert allowed(statements, "oss:GetObject", ANY, {"acs:SecureTransport": True})
    assert allowed(statements, "oss:GetObject", ANY, {})  # missing key: the Deny does not apply
    assert not allowed(statements, "oss:GetObject", ANY, {"acs:SecureTransport": "false"})
    statements[1] = deny("*", Condition={"BoolIfExists": {"acs:SecureTransport": "false"}})
    assert not allowed(statements, "oss:GetObject", ANY, {})  # ...unless it says IfExists


def test_condition_key_names_in_the_policy_ignore_case_too() -> None:
    assert allowed([allow("*", Condition={"StringEquals": {"ECS:TAG/Env": "prod"}})], "ecs:Run", ANY, {"ecs:tag/env": "prod"})


# -- Alibaba's documented example policies -------------------------------------------------------
def test_administrator_access_allows_everything() -> None:
    admin = NamedPolicy("System:AdministratorAccess", "v1",
                        policy.parse('{"Statement":[{"Action":"*","Effect":"Allow","Resource":"*"}],"Version":"1"}'))
    for action, resource in [("ram:CreateUser", "acs:ram:*:1:user/x"), ("ecs:RunInstances", ANY), ("oss:GetObject", "acs:oss:*:1:b/k")]:
        assert decide([admin], RequestContext(action, resource)).allowed


def test_the_seeds_pass_role_policy() -> None:
    text = """{"Statement": [{"Effect": "Allow", "Action": "ram:PassRole",
                "Resource": "acs:ram:*:*:role/MyApplicationRole"}], "Version": "1"}"""
    pass_role = [NamedPolicy("Custom:PassMyRole", "v1", policy.parse(text))]

    def passes(resource: str, action: str = "ram:PassRole") -> bool:
        return decide(pass_role, RequestContext(action, resource)).allowed

    assert passes(f"acs:ram:*:{ACCT}:role/MyApplicationRole")
    assert passes(f"acs:ram::{ACCT}:role/MyApplicationRole")  # the ARN the API returns
    assert passes(f"acs:ram::{ACCT}:role/MyApplicationRole", "RAM:passrole")
    assert not passes(f"acs:ram::{ACCT}:role/myapplicationrole")
    assert not passes(f"acs:ram::{ACCT}:role/OtherRole")
    assert not passes(f"acs:ram::{ACCT}:role/MyApplicationRole", "ram:CreateRole")


@pytest.mark.parametrize(("source_ip", "expected"), [
    ("192.168.0.1", True), ("192.168.255.255", True), ("172.16.215.218", True),
    ("172.16.215.217", False), ("10.0.0.1", False), ("", False)])
def test_ecs_only_from_a_cidr_block_or_an_address(source_ip: str, expected: bool) -> None:
    text = """{"Statement": [{"Action": "ecs:*", "Effect": "Allow", "Resource": "*",
               "Condition": {"IpAddress": {"acs:SourceIp": ["192.168.0.0/16", "172.16.215.218"]}}}], "Version": "1"}"""
    request = RequestContext("ecs:DescribeInstances", ANY, {"acs:SourceIp": source_ip} if source_ip else {})
    assert decide([NamedPolicy("Custom:Ip", "v1", policy.parse(text))], request).allowed is expected


@pytest.mark.parametrize(("source_ip", "decision"), [
    ("192.0.2.7", "Allow"), ("203.0.113.2", "Allow"), ("198.51.100.1", "ExplicitDeny")])
def test_the_deny_form_of_the_source_ip_policy(source_ip: str, decision: str) -> None:
    text = """{"Statement": [{"Action": "ecs:*", "Effect": "Allow", "Resource": "*"},
               {"Action": "ecs:*", "Effect": "Deny", "Resource": "*",
                "Condition": {"NotIpAddress": {"acs:SourceIp": ["192.0.2.0/24", "203.0.113.2"]}}}], "Version": "1"}"""
    request = RequestContext("ecs:StopInstance", ANY, {"acs:SourceIp": source_ip})
    assert decide([NamedPolicy("Custom:Ip", "v1", policy.parse(text))], request).decision == decision


@pytest.mark.parametrize(("now", "expected"), [
    ("2019-08-12T08:59:59Z", True), ("2019-08-12T16:59:59+08:00", True), ("2019-08-12T09:00:00Z", False),
    ("2026-11-29T05:00:00Z", False)])
def test_ecs_until_a_beijing_time(now: str, expected: bool) -> None:
    text = """{"Statement": [{"Action": "ecs:*", "Effect": "Allow", "Resource": "*",
               "Condition": {"DateLessThan": {"acs:CurrentTime": "2019-08-12T17:00:00+08:00"}}}], "Version": "1"}"""
    request = RequestContext("ecs:RunInstances", ANY, {"acs:CurrentTime": now})
    assert decide([NamedPolicy("Custom:Until", "v1", policy.parse(text))], request).allowed is expected


@pytest.mark.parametrize(("secure", "decision"), [(True, "Allow"), ("true", "Allow"), (False, "ExplicitDeny"),
                                                  ("false", "ExplicitDeny"), (None, "Allow")])
def test_oss_only_over_https(secure: object, decision: str) -> None:
    text = """{"Version": "1", "Statement": [{"Effect": "Allow", "Action": "oss:*", "Resource": "*"},
              {"Effect": "Deny", "Action": "oss:*", "Resource": "*", "Condition": {"Bool": {"acs:SecureTransport": "false"}}}]}"""
    request = RequestContext("oss:GetObject", "acs:oss:*:1:b/k", {"acs:SecureTransport": secure})
    assert decide([NamedPolicy("Custom:Https", "v1", policy.parse(text))], request).decision == decision


@pytest.mark.parametrize(("action", "resource", "prefix", "expected"), [
    ("oss:GetObject", "acs:oss:*:1:myphotos/hangzhou/2015/a.jpg", None, True),
    ("oss:GetObject", "acs:oss:*:1:myphotos/hangzhou/2016/a.jpg", None, False),
    ("oss:ListObjects", "acs:oss:*:1:myphotos", "hangzhou/2015/", True),
    ("oss:ListObjects", "acs:oss:*:1:myphotos", "hangzhou/2015/x", True),
    ("oss:ListObjects", "acs:oss:*:1:myphotos", "hangzhou/", False),
    ("oss:ListObjects", "acs:oss:*:1:myphotos", None, False),
])
def test_oss_listing_by_prefix(action: str, resource: str, prefix: str | None, expected: bool) -> None:
    text = """{"Version": "1", "Statement": [
      {"Effect": "Allow", "Action": ["oss:GetObject"], "Resource": ["acs:oss:*:*:myphotos/hangzhou/2015/*"]},
      {"Effect": "Allow", "Action": ["oss:ListObjects"], "Resource": ["acs:oss:*:*:myphotos"],
       "Condition": {"StringLike": {"oss:Prefix": "hangzhou/2015/*"}}}]}"""
    request = RequestContext(action, resource, {"oss:Prefix": prefix} if prefix is not None else {})
    assert decide([NamedPolicy("Custom:Photos", "v1", policy.parse(text))], request).allowed is expected


def test_ecs_only_for_instances_tagged_team_dev() -> None:
    text = doc({"Effect": "Allow", "Action": "ecs:*", "Resource": "*",
                "Condition": {"StringEquals": {"acs:ResourceTag/team": ["dev"]}}})
    tagged = NamedPolicy("Custom:Dev", "v1", policy.parse(text))
    assert decide([tagged], RequestContext("ecs:StopInstance", ANY, {"acs:ResourceTag/team": "dev"})).allowed
    assert not decide([tagged], RequestContext("ecs:StopInstance", ANY, {"acs:ResourceTag/team": "ops"})).allowed
    assert not decide([tagged], RequestContext("ecs:StopInstance", ANY, {"acs:resourcetag/Team": "Dev"})).allowed


def test_pass_role_only_to_one_service() -> None:
    text = doc({"Effect": "Allow", "Action": "ram:PassRole", "Resource": "*",
                "Condition": {"StringEquals": {"acs:Service": "fc.aliyuncs.com"}}})
    service = [NamedPolicy("Custom:PassToFc", "v1", policy.parse(text))]
    role = f"acs:ram::{ACCT}:role/R"
    assert decide(service, RequestContext("ram:PassRole", role, {"acs:Service": "fc.aliyuncs.com"})).allowed
    assert not decide(service, RequestContext("ram:PassRole", role, {"acs:Service": "ecs.aliyuncs.com"})).allowed
    assert not decide(service, RequestContext("ram:PassRole", role)).allowed


def test_power_user_style_not_action() -> None:
    text = doc({"Effect": "Allow", "NotAction": ["ram:*", "ims:*", "resourcemanager:*"], "Resource": "*"},
               allow(["ram:GetRole", "ram:ListRoles"]))
    power = [NamedPolicy("System:PowerUserAccess", "v1", policy.parse(text))]
    assert decide(power, RequestContext("ecs:RunInstances", ANY)).allowed
    assert decide(power, RequestContext("ram:ListRoles", "*")).allowed
    assert not decide(power, RequestContext("ram:CreateUser", "*")).allowed
    assert not decide(power, RequestContext("ResourceManager:CreateFolder", "*")).allowed


def test_system_policies_parse_and_grant_what_they_say() -> None:
    docs = {name: policy.parse(text) for name, (_, text) in policy.SYSTEM_POLICIES.items()}

    def allows(name: str, action: str) -> bool:
        return policy.evaluate([(name, docs[name])], action, "acs:x:*:1:y").allowed

    assert allows("AdministratorAccess", "ram:CreateUser")
    assert allows("ReadOnlyAccess", "ecs:DescribeInstances") and not allows("ReadOnlyAccess", "ecs:RunInstances")
    assert allows("AliyunECSFullAccess", "ecs:RunInstances") and not allows("AliyunECSFullAccess", "oss:GetObject")
    assert allows("AliyunECSReadOnlyAccess", "ecs:DescribeInstances") and not allows("AliyunECSReadOnlyAccess", "ecs:RunInstances")
    assert allows("AliyunOSSFullAccess", "oss:PutObject") and not allows("AliyunOSSFullAccess", "ecs:RunInstances")
    assert allows("AliyunOSSReadOnlyAccess", "oss:GetObject") and not allows("AliyunOSSReadOnlyAccess", "oss:PutObject")
    assert allows("AliyunSTSAssumeRoleAccess", "sts:AssumeRole") and not allows("AliyunSTSAssumeRoleAccess", "ram:PassRole")
    assert allows("AliyunRAMFullAccess", "ram:AttachPolicyToRole") and not allows("AliyunRAMFullAccess", "ecs:RunInstances")


# -- trust ---------------------------------------------------------------------------------
def test_ecs_trust_policy_trusts_the_ecs_service_only() -> None:
    document = policy.parse(policy.ECS_TRUST_POLICY, trust=True)
    assert policy.trusts(document, "Service", "ecs.aliyuncs.com")
    assert policy.trusts(document, "Service", "ECS.aliyuncs.com")  # service names ignore case
    assert not policy.trusts(document, "Service", "fc.aliyuncs.com")
    assert not policy.trusts(document, "RAM", "ecs.aliyuncs.com")  # the kind must match
    assert not policy.trusts(document, "RAM", f"acs:ram::{ACCT}:user/alice")
    assert not policy.trusts(document, "Service", "ecs.aliyuncs.com", "sts:GetCallerIdentity")
    assert policy.trusts(document, "Service", "ecs.aliyuncs.com", "STS:assumerole")


def test_ram_principal_trust_is_exact_and_case_sensitive() -> None:
    document = trust_doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCT}:user/alice"]}})
    assert policy.trusts(document, "RAM", f"acs:ram::{ACCT}:user/alice")
    assert not policy.trusts(document, "RAM", f"acs:ram::{ACCT}:user/Alice")
    assert not policy.trusts(document, "RAM", f"acs:ram::{ACCT}:user/bob")
    assert not policy.trusts(document, "Service", f"acs:ram::{ACCT}:user/alice")


def test_ram_principal_trust_with_wildcards() -> None:
    document = trust_doc({"Effect": "Allow", "Action": "sts:*", "Principal": {"RAM": f"acs:ram::{ACCT}:user/dev-?"}})
    assert policy.trusts(document, "RAM", f"acs:ram::{ACCT}:user/dev-1")
    assert not policy.trusts(document, "RAM", f"acs:ram::{ACCT}:user/dev-10")
    anyone = trust_doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": "*"}})
    assert policy.trusts(anyone, "RAM", "acs:ram::9:root") and not policy.trusts(anyone, "Service", "ecs.aliyuncs.com")


@pytest.mark.parametrize("order", ["deny-first", "allow-first"])
def test_deny_in_trust_wins(order: str) -> None:
    alice = f"acs:ram::{ACCT}:user/alice"
    statements = [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": [alice, f"acs:ram::{ACCT}:user/bob"]}},
        {"Effect": "Deny", "Action": "sts:AssumeRole", "Principal": {"RAM": alice}, "Sid": "NotAlice"},
    ]
    if order == "deny-first":
        statements.reverse()
    document = trust_doc(*statements)
    assert not policy.trusts(document, "RAM", alice)
    assert policy.trusts(document, "RAM", f"acs:ram::{ACCT}:user/bob")
    explained = policy.explain_trust(document, "RAM", alice)
    assert explained.decision == "ExplicitDeny" and explained.matches[0].sid == "NotAlice"
    deny_index = 1 if order == "allow-first" else 0
    assert explained.reason == f"explicitly denied by trust policy statement {deny_index} (Sid NotAlice)"


def test_trust_deny_for_another_action_does_not_block_assume_role() -> None:
    document = trust_doc(
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ecs.aliyuncs.com"}},
        {"Effect": "Deny", "Action": "sts:Other", "Principal": {"Service": "ecs.aliyuncs.com"}},
    )
    assert policy.trusts(document, "Service", "ecs.aliyuncs.com")
    assert not policy.trusts(document, "Service", "ecs.aliyuncs.com", "sts:Other")


def test_trust_without_any_allow_is_false() -> None:
    document = trust_doc({"Effect": "Deny", "Action": "sts:AssumeRole", "Principal": {"Service": "fc.aliyuncs.com"}})
    assert not policy.trusts(document, "Service", "ecs.aliyuncs.com")
    explained = policy.explain_trust(document, "Service", "ecs.aliyuncs.com")
    assert explained == Verdict(False, "no statement of the trust policy allows Service ecs.aliyuncs.com to sts:AssumeRole")


def test_a_federated_trust_policy_with_a_condition() -> None:
    provider = f"acs:ram::{ACCT}:saml-provider/IdP"
    document = trust_doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Federated": [provider]},
                          "Condition": {"StringEquals": {"saml:recipient": "https://signin.aliyun.com/saml-role/sso"}}})
    assert policy.trusts(document, "Federated", provider, keys={"saml:recipient": "https://signin.aliyun.com/saml-role/sso"})
    assert not policy.trusts(document, "Federated", provider, keys={"saml:recipient": "https://evil.example/sso"})
    assert not policy.trusts(document, "Federated", provider)  # the key is missing
    assert not policy.trusts(document, "Federated", provider + "2", keys={"saml:recipient": "https://signin.aliyun.com/saml-role/sso"})


def test_an_oidc_trust_policy_ands_its_keys() -> None:
    provider = f"acs:ram::{ACCT}:oidc-provider/GitHub"
    document = trust_doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Federated": provider},
                          "Condition": {"StringEquals": {"oidc:iss": "https://token.actions.githubusercontent.com",
                                                         "oidc:aud": "sts.aliyuncs.com"},
                                        "StringLike": {"oidc:sub": "repo:org/app:*"}}})
    keys = {"oidc:iss": "https://token.actions.githubusercontent.com", "oidc:aud": "sts.aliyuncs.com", "oidc:sub": "repo:org/app:ref:main"}
    assert policy.trusts(document, "Federated", provider, keys=keys)
    assert not policy.trusts(document, "Federated", provider, keys={**keys, "oidc:sub": "repo:other/app:ref:main"})
    assert not policy.trusts(document, "Federated", provider, keys={**keys, "oidc:aud": "x"})


def test_a_service_trust_limited_by_source_ip_and_time() -> None:
    document = trust_doc({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": f"acs:ram::{ACCT}:root"},
                          "Condition": {"IpAddress": {"acs:SourceIp": "10.0.0.0/8"},
                                        "DateLessThan": {"acs:CurrentTime": "2030-01-01T00:00:00Z"}}})
    root = f"acs:ram::{ACCT}:root"
    assert policy.trusts(document, "RAM", root, keys={"acs:SourceIp": "10.1.1.1", "acs:CurrentTime": "2026-11-29T05:00:00Z"})
    assert not policy.trusts(document, "RAM", root, keys={"acs:SourceIp": "10.1.1.1", "acs:CurrentTime": "2030-01-01T00:00:00Z"})
    assert not policy.trusts(document, "RAM", root, keys={"acs:SourceIp": "11.1.1.1", "acs:CurrentTime": "2026-11-29T05:00:00Z"})


# -- properties --------------------------------------------------------------------------------
SERVICES = ["ecs", "oss", "ram", "sts"]
NAMES = ["RunInstances", "DescribeInstances", "GetObject", "PassRole", "ListUsers", "AssumeRole"]
ACTION_PATTERNS = ["*", "ecs:*", "ecs:Describe*", "oss:Get*", "*:List*", "e?s:Run*", "ram:PassRole", "sts:AssumeRole", "ecs:*Instances"]
RESOURCES = ["*", "acs:ecs:*:*:instance/*", "acs:oss:*:*:b/*", "acs:ram:*:*:role/R", f"acs:ecs:cn-hangzhou:{ACCT}:instance/i-1",
             "acs:*:*:*:*", "acs:ecs:cn-*:*:instance/i-?"]
REQUEST_RESOURCES = [f"acs:ecs:cn-hangzhou:{ACCT}:instance/i-1", f"acs:ecs:us-west-1:{ACCT}:instance/i-22",
                     f"acs:oss:*:{ACCT}:b/k", f"acs:ram::{ACCT}:role/R", "*"]
CONDITIONS = [
    {"IpAddress": {"acs:SourceIp": "10.0.0.0/8"}},
    {"NotIpAddress": {"acs:SourceIp": ["192.168.0.0/16"]}},
    {"Bool": {"acs:SecureTransport": "true"}},
    {"BoolIfExists": {"acs:MFAPresent": "true"}},
    {"DateLessThan": {"acs:CurrentTime": "2027-01-01T00:00:00Z"}},
    {"StringEquals": {"acs:Service": ["ecs.aliyuncs.com", "fc.aliyuncs.com"]}},
    {"StringNotEqualsIfExists": {"ecs:tag/env": "prod"}},
]
KEY_CHOICES = {
    "acs:SourceIp": ["10.1.2.3", "192.168.1.1", "8.8.8.8"],
    "acs:SecureTransport": [True, False, "true"],
    "acs:MFAPresent": [True, "false"],
    "acs:CurrentTime": ["2026-11-29T05:00:00Z", "2027-06-01T00:00:00+08:00"],
    "acs:Service": ["ecs.aliyuncs.com", "oss.aliyuncs.com"],
    "ecs:tag/env": ["prod", "dev", ["dev", "prod"]],
}

statements = st.builds(
    lambda effect, actions, not_action, resources, condition: {
        "Effect": effect, "NotAction" if not_action else "Action": actions, "Resource": resources,
        **({"Condition": condition} if condition else {})},
    st.sampled_from(["Allow", "Allow", "Deny"]),
    st.lists(st.sampled_from(ACTION_PATTERNS), min_size=1, max_size=3),
    st.sampled_from([False, False, False, True]),
    st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2),
    st.none() | st.sampled_from(CONDITIONS),
)
policies = st.lists(st.lists(statements, min_size=1, max_size=4), max_size=3).map(
    lambda docs: [NamedPolicy(f"Custom:P{i}", "v1", policy.parse(doc(*s))) for i, s in enumerate(docs)])
requests = st.builds(
    lambda service, name, case, resource, keys: RequestContext(
        f"{service}:{name}".upper() if case else f"{service}:{name}", resource, keys),
    st.sampled_from(SERVICES), st.sampled_from(NAMES), st.booleans(), st.sampled_from(REQUEST_RESOURCES),
    st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in KEY_CHOICES.items()}),
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(policies=policies, request=requests, where=st.integers(0, 3), seed_action=st.booleans())
def test_adding_a_matching_deny_always_gives_an_explicit_deny(policies: list[NamedPolicy], request: RequestContext,
                                                              where: int, seed_action: bool) -> None:
    before = decide(policies, request)
    matching = deny(request.action.swapcase() if seed_action else "*", request.resource if seed_action else "*", Sid="Added")
    extra = named(matching, name="Custom:Added")
    after = decide(policies[:where] + [extra] + policies[where:], request)
    assert after.decision == "ExplicitDeny" and not after.allowed, (before, after)
    assert Match("Custom:Added", "v1", 0, "Deny", "Added") in after.matches
    if not before.allowed:
        assert not after.allowed
    # in the session policy too
    assert decide(policies, request, session=[extra]).decision == "ExplicitDeny"


@PROPERTY
@given(policies=policies, session=policies, request=requests)
def test_a_session_policy_never_widens(policies: list[NamedPolicy], session: list[NamedPolicy], request: RequestContext) -> None:
    alone = decide(policies, request)
    narrowed = decide(policies, request, session=session)
    if narrowed.allowed:
        assert alone.allowed, (alone, narrowed)
    if alone.decision == "ExplicitDeny":
        assert narrowed.decision == "ExplicitDeny"
    if session:
        assert narrowed.allowed == (alone.allowed and decide(session, request).allowed
                                    and decide(policies + session, request).decision != "ExplicitDeny")


@PROPERTY
@given(request=requests, action=st.text(min_size=0, max_size=20), others=policies)
def test_an_allow_star_policy_allows_every_request(request: RequestContext, action: str, others: list[NamedPolicy]) -> None:
    star = named(allow("*"), name="System:AdministratorAccess")
    assert decide([star], request).allowed
    assert decide([star], RequestContext(action, request.resource, request.keys)).allowed
    without_denies = [p for p in others if all(s.effect == "Allow" for s in p.document.statements)]
    result = decide(without_denies + [star], request)
    assert result.allowed and Match("System:AdministratorAccess", "v1", 0, "Allow") in result.matches


@PROPERTY
@given(policies=policies, request=requests)
def test_action_case_never_changes_a_decision(policies: list[NamedPolicy], request: RequestContext) -> None:
    upper = RequestContext(request.action.upper(), request.resource, request.keys)
    lower = RequestContext(request.action.lower(), request.resource, request.keys)
    assert decide(policies, upper).decision == decide(policies, lower).decision
