"""Kubernetes' own rules for names, labels, selectors and tolerations (k8s.io/apimachinery validation), checked by
`swiftops validate` so that what the API server would refuse is reported before any cluster is touched, with the
manifest's field path and line. Each function returns None when the value is valid, else why it is not."""

from __future__ import annotations

import re

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def dns1123_label(value: str) -> str | None:
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not DNS1123_LABEL.match(value):
        return (
            f"{value!r} is not a DNS-1123 label: lower-case letters, digits and '-', starting and ending with "
            f"a letter or digit"
        )
    return None


def dns1035_label(value: str) -> str | None:
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not DNS1035_LABEL.match(value):
        return (
            f"{value!r} is not a DNS-1035 label: lower-case letters, digits and '-', starting with a letter "
            f"and ending with a letter or digit"
        )
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253:
        return f"{value!r} is longer than 253 characters"
    if not DNS1123_SUBDOMAIN.match(value):
        return (
            f"{value!r} is not a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and "
            f"ending with a letter or digit"
        )
    return None


def qualified_name(value: str) -> str | None:
    """A label, annotation, selector or taint key: [DNS-subdomain prefix/]name, the name at most 63 characters."""
    prefix, _, name = value.rpartition("/")
    if "/" in value and not prefix:
        return f"{value!r} has an empty prefix before '/'"
    if prefix and (reason := dns1123_subdomain(prefix)):
        return f"the prefix of {value!r}: {reason}"
    if not name or len(name) > 63 or not QUALIFIED_NAME_PART.match(name):
        return (
            f"{value!r} is not a valid key: at most 63 letters, digits, '-', '_' or '.', starting and ending "
            f"with a letter or digit (optionally after a DNS prefix and '/')"
        )
    return None


def label_value(value: str) -> str | None:
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not LABEL_VALUE.match(value):
        return (
            f"{value!r} is not a valid label value: letters, digits, '-', '_' and '.', starting and ending with "
            f"a letter or digit (no spaces)"
        )
    return None


def secret_key(value: str) -> str | None:
    if len(value) > 253 or not SECRET_KEY.match(value):
        return f"{value!r} is not a valid Secret key: at most 253 letters, digits, '-', '_' or '.'"
    return None


def extended_resource(value: str) -> str | None:
    """A GPU resource name: domain-qualified (nvidia.com/gpu), outside kubernetes.io."""
    if "/" not in value:
        return f"{value!r} is not an extended resource name: it needs a domain prefix, e.g. nvidia.com/gpu"
    if reason := qualified_name(value):
        return reason
    domain = value.split("/", 1)[0]
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return f"{value!r} is in the kubernetes.io domain, which is reserved for Kubernetes' own resources"
    return None
