//! Sans-IO codecs for Postfix's lookup and policy protocols (filled in next).
