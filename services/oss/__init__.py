"""OSS: an object store speaking enough of Alibaba OSS for the official SDKs."""
