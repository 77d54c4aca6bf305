"""The EU Digital COVID Certificate codec: what issuers and verifiers share.

HC1 = "HC1:" + base45(zlib(COSE_Sign1(CWT{iss, iat, exp, -260: {1: DCC JSON}})))
"""
