"""A giftless authenticator for tests: everyone may read and write every object.

giftless's own `allow_anon:read_write` grants nothing on a single object (its permission lookup
for an object id falls through to an empty set), so uploads and downloads of objects are
refused; this identity answers yes to every check instead. The git HTTP bridge in `git.rs`
checks Basic auth in front of the server where a test needs credentials.
"""

from giftless.auth.identity import DefaultIdentity


class Anyone(DefaultIdentity):
    def is_authorized(self, organization, repo, permission, oid=None):
        return True


def anyone(_request):
    return Anyone(name="anyone")
